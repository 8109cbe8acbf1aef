"""Batched messages waiting in Redis: names, keys and the registry's switch."""

import binascii
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from taskiq import InMemoryBroker
from taskiq_aio_pika import AioPikaBroker
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching.core.broker_keys import NO_KEY, broker_key
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import redis_list, transport_for
from taskiq_batching.transports.redis_batches import (
    StreamBatches,
    TaskEntry,
    TaskStreams,
    entry_ms,
)
from taskiq_batching.transports.redis_batches_base import CLAIM_EVERY_SECONDS
from taskiq_batching.transports.redis_batches_names import slot_of
from taskiq_batching.transports.redis_batches_wake import Wakes
from taskiq_batching.transports.redis_common import RedisClient
from taskiq_batching.transports.redis_list_batches import ListBatches, element_of

pytestmark = pytest.mark.timeout(30)


def _slot(key: str) -> int:
    """Redis Cluster's slot of a key, as the server computes it."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start != -1 and end > start + 1:
        key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % 16384


def test_a_tasks_names_share_one_cluster_slot() -> None:
    names = TaskStreams("taskiq", "app.tasks:insert_rows")
    assert names.keys == "{taskiq:app.tasks:insert_rows}:keys"
    assert names.wake == "{taskiq:app.tasks:insert_rows}:wake"
    assert names.stream("-") == "{taskiq:app.tasks:insert_rows}:q:-"
    slots = {_slot(n) for n in (names.keys, names.wake, names.stream("ab12"))}
    assert slots == {slot_of(names.wake)}


def test_braces_in_a_name_do_not_break_the_tag() -> None:
    names = TaskStreams("q{1}", "t}x")
    assert names.keys.count("{") == 1
    assert names.keys.count("}") == 1
    assert _slot(names.keys) == _slot(names.stream("-")) == _slot(names.wake)


def test_two_tasks_get_their_own_names() -> None:
    assert TaskStreams("q", "a").keys != TaskStreams("q", "b").keys


def test_a_task_entry_is_the_plain_entry_to_acks_and_refreshes() -> None:
    names = TaskStreams("q", "t")
    entry = TaskEntry(names.stream("-"), b"5-1", (names, "-"))
    assert entry == (names.stream("-"), b"5-1")
    assert entry in {(names.stream("-"), b"5-1")}
    stream, entry_id = entry
    assert (stream, entry_id, entry.key, entry.names) == (
        names.stream("-"),
        b"5-1",
        "-",
        names,
    )
    assert entry.sent_ms == 5  # its id's time
    assert TaskEntry(stream, b"5-1", (names, "-"), 3).sent_ms == 3  # its t
    assert entry_ms(b"1700000000123-4") == 1700000000123


def test_messages_without_extra_arguments_share_the_plain_key() -> None:
    assert broker_key([], {}) == NO_KEY


def test_equal_extra_arguments_share_a_key_and_others_do_not() -> None:
    one = broker_key([1, "a"], {"tenant": "x", "n": 2})
    assert one == broker_key([1, "a"], {"n": 2, "tenant": "x"})
    assert one != broker_key([1, "a"], {"tenant": "y", "n": 2})
    assert one != broker_key([1, "b"], {"tenant": "x", "n": 2})
    assert len(one) == 16


def test_batch_key_values_set_keys_apart() -> None:
    def tenant(item: dict[str, str]) -> str:
        return item["tenant"]

    a = broker_key([], {}, tenant, {"tenant": "a", "v": 1})
    assert a == broker_key([], {}, tenant, {"tenant": "a", "v": 2})
    assert a != broker_key([], {}, tenant, {"tenant": "b", "v": 1})


def test_a_batch_key_that_fails_on_the_producer_only_groups_less() -> None:
    def broken(item: object) -> str:
        raise AttributeError("tenant")

    assert broker_key([], {}, broken, 1) == NO_KEY
    assert broker_key([1], {}, broken, 1) == broker_key([1], {}, broken, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RedisStreamBroker("redis://localhost:6379/0"),
        lambda: RedisStreamSentinelBroker([("localhost", 26379)], "mymaster"),
        lambda: RedisStreamClusterBroker("redis://localhost:7000"),
    ],
    ids=["standalone", "sentinel", "cluster"],
)
def test_stream_brokers_have_a_batch_source_when_switched_on(make: object) -> None:
    broker = make()  # type: ignore[operator]
    assert isinstance(transport_for(broker, wait_in_broker=True).batches, StreamBatches)
    assert transport_for(broker, wait_in_broker=False).batches is None
    # None, the middleware's default: the path is opt-in (docs/fleet.md).
    assert transport_for(broker).batches is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: ListQueueBroker("redis://localhost:6379/0"),
        lambda: ListQueueSentinelBroker([("localhost", 26379)], "mymaster"),
        lambda: ListQueueClusterBroker("redis://localhost:7000"),
    ],
    ids=["standalone", "sentinel", "cluster"],
)
def test_list_brokers_have_a_batch_source_when_switched_on(make: object) -> None:
    broker = make()  # type: ignore[operator]
    assert isinstance(transport_for(broker, wait_in_broker=True).batches, ListBatches)
    assert transport_for(broker, wait_in_broker=False).batches is None
    # None, the middleware's default: not yet for lists (docs/fleet.md).
    default = redis_list.transport_for(broker, wait_in_broker=None)
    assert default is not None
    assert default.batches is None


def test_a_list_element_is_its_time_and_its_message() -> None:
    assert element_of(b'1700000000123|{"a": 1}') == (1700000000123, b'{"a": 1}')
    assert element_of(b"12|a|b") == (12, b"a|b")  # only the first bar
    assert element_of("5|x") == (5, b"x")
    assert element_of(b'{"no": "stamp"}') == (None, b'{"no": "stamp"}')


def test_other_brokers_have_no_batch_source() -> None:
    for broker in (
        AioPikaBroker("amqp://guest:guest@localhost:5672/"),
        InMemoryBroker(),
    ):
        assert transport_for(broker).batches is None


@pytest.mark.parametrize(
    "reply",
    [
        [[b"w", [(b"7-1", {b"w": b"1"})]]],  # RESP2
        {b"w": [[(b"7-1", {b"w": b"1"})]]},  # RESP3: one list more
        [[b"w", [[b"7-1", [b"w", b"1"]]]]],  # unparsed
    ],
    ids=["resp2", "resp3", "raw"],
)
def test_a_wait_remembers_the_wake_id_read_whatever_the_protocol(reply: object) -> None:
    wakes = Wakes(RedisClient(RedisStreamBroker("redis://localhost:6379/0")))
    wakes._read(reply)
    assert wakes.seen == {"w": b"7-1"}


def _spec(task_name: str, key: Callable[[Any], Any] | None = None) -> BatchSpec:
    """A task's spec as the take reads it (its name and settings only)."""
    settings = BatchSettings(batch_size=10, batch_timeout=1.0, key=key)
    return BatchSpec(task_name, settings, cast(Any, None), None)


def test_a_take_looks_for_a_dead_workers_entries_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``XAUTOCLAIM`` scans what is pending (a quarter of a take's server
    time): a process asks for it at most every ``CLAIM_EVERY_SECONDS`` per
    task, or a quarter of ``idle_timeout`` if shorter."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    for idle_ms, every in ((600_000, CLAIM_EVERY_SECONDS), (400, 0.1)):
        broker = RedisStreamBroker("redis://localhost:6379/0", idle_timeout=idle_ms)
        batches = transport_for(broker, wait_in_broker=True).batches
        assert isinstance(batches, StreamBatches)
        assert batches._claim_ms(_spec("a")) == idle_ms
        assert batches._claim_ms(_spec("a")) == 0
        assert batches._claim_ms(_spec("b")) == idle_ms  # each task its own
        now[0] += every * 0.9
        assert batches._claim_ms(_spec("a")) == 0
        now[0] += every * 0.2
        assert batches._claim_ms(_spec("a")) == idle_ms
        assert batches._claim_ms(_spec("k", key=len)) == idle_ms
        assert batches._claim_ms(_spec("k", key=len)) == idle_ms  # keyed: always
