"""A delivery's send time from its AMQP properties: what counts, what is ignored."""

import datetime
from decimal import Decimal
from typing import Any

import pytest
from pamqp.commands import Basic

from taskiq_batching.transports.amqp_headers import (
    OVERFLOW_LABEL,
    Overflowed,
    properties_sent_at,
    sent_at_of,
)
from taskiq_batching.transports.delivery import SENT_AT_LABEL

pytestmark = pytest.mark.timeout(10)

STAMP = 1700000000.5


def test_the_producers_header_is_read() -> None:
    assert sent_at_of({SENT_AT_LABEL: STAMP}, None) == STAMP
    assert sent_at_of({SENT_AT_LABEL: 1700000000}, None) == 1700000000.0
    assert sent_at_of({SENT_AT_LABEL: Decimal("1700000000.5")}, None) == STAMP
    # taskiq sends label values as text.
    assert sent_at_of({SENT_AT_LABEL: "1700000000.5"}, None) == STAMP


def test_a_message_its_full_queue_refused_is_marked_by_its_send_time() -> None:
    """The ``batch_overflow`` header makes the send time an ``Overflowed``:
    the same seconds, its type telling the worker not to forward it."""
    marked = sent_at_of({SENT_AT_LABEL: "1700000000.5", OVERFLOW_LABEL: "1"}, None)
    assert type(marked) is Overflowed
    assert marked == STAMP
    assert type(sent_at_of({SENT_AT_LABEL: STAMP}, None)) is float
    # Without a send time of the producer's, nothing to mark.
    assert sent_at_of({OVERFLOW_LABEL: "1"}, None) is None


def test_the_header_wins_over_the_whole_second_timestamp() -> None:
    timestamp = datetime.datetime(2023, 11, 14, 22, 13, 20)  # naive: UTC
    assert sent_at_of({SENT_AT_LABEL: STAMP}, timestamp) == STAMP
    assert sent_at_of({}, timestamp) == 1700000000.0
    aware = timestamp.replace(tzinfo=datetime.timezone.utc)
    assert sent_at_of(None, aware) == 1700000000.0


@pytest.mark.parametrize(
    ("headers", "timestamp"),
    [
        pytest.param(None, None, id="nothing"),
        pytest.param({SENT_AT_LABEL: "yesterday"}, None, id="not a number"),
        pytest.param({SENT_AT_LABEL: "nan"}, None, id="nan as text"),
        pytest.param({SENT_AT_LABEL: "1e400"}, None, id="inf as text"),
        pytest.param({SENT_AT_LABEL: "1" * 5000}, None, id="long text"),
        pytest.param({SENT_AT_LABEL: b"\xff"}, None, id="bytes"),
        pytest.param({SENT_AT_LABEL: True}, None, id="a bool"),
        pytest.param({SENT_AT_LABEL: float("nan")}, None, id="nan"),
        pytest.param({SENT_AT_LABEL: float("inf")}, None, id="inf"),
        pytest.param({SENT_AT_LABEL: 10**400}, None, id="a huge int"),
        pytest.param({SENT_AT_LABEL: Decimal("NaN")}, None, id="a NaN decimal"),
        pytest.param({SENT_AT_LABEL: Decimal("1e400")}, None, id="a huge decimal"),
        pytest.param({SENT_AT_LABEL: {"a": 1}}, None, id="a table"),
        pytest.param(["not", "a", "table"], None, id="headers not a table"),
        pytest.param(None, "yesterday", id="a timestamp not a datetime"),
    ],
)
def test_a_crafted_value_is_ignored(headers: Any, timestamp: Any) -> None:
    assert sent_at_of(headers, timestamp) is None


def test_a_content_headers_properties_are_read() -> None:
    properties = Basic.Properties(headers={SENT_AT_LABEL: STAMP})
    assert properties_sent_at(properties) == STAMP
    assert properties_sent_at(Basic.Properties()) is None
    assert properties_sent_at(None) is None
