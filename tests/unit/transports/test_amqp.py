"""The AMQP transport's reading, without a server: the order of deliveries."""

from typing import Any

import pytest
from taskiq_aio_pika import AioPikaBroker

from taskiq_batching.transports.amqp import AmqpTransport

pytestmark = pytest.mark.timeout(10)


class FakeChannel:
    is_closed = False


async def test_a_delivery_that_came_the_long_way_takes_its_place_in_tag_order() -> None:
    transport = AmqpTransport(AioPikaBroker("amqp://nowhere/", qos=10))
    transport._started = True  # as if consuming (no server here)
    channel, other = FakeChannel(), FakeChannel()
    note: Any = transport._inbox.note
    # A channel's first deliveries came through aio-pika's callback (tasks):
    # they are noted after later ones that were tapped.
    for tag in (3, 4):
        note(channel, tag, "c", str(tag).encode())
    note(other, 1, "c", b"other 1")
    note(channel, 1, "c", b"1")
    note(channel, 2, "c", b"2")
    note(channel, 2, "c", b"2 again")  # never twice
    chunk = await transport.read(10)
    assert [d.data for d in chunk] == [b"1", b"2", b"3", b"4", b"other 1"]
    assert transport.outstanding == 5
