"""Giving read messages back to the tail of a Redis stream or list."""

from typing import Any

import pytest
from taskiq import BrokerMessage
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_stream import StreamTransport

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


def given(deliveries: list[Delivery]) -> list[tuple[Delivery, BrokerMessage]]:
    return [
        (
            d,
            BrokerMessage(
                task_id=d.data.decode(), task_name="t", message=d.data, labels={}
            ),
        )
        for d in deliveries
    ]


async def kick(broker: Any, payloads: list[bytes]) -> None:
    for payload in payloads:
        await broker.kick(
            BrokerMessage(task_id="x", task_name="t", message=payload, labels={})
        )


async def test_stream_entries_go_to_the_end_acked_once(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = RedisStreamBroker(URL, queue_name="s", xread_block=10, **fake)
    await broker.startup()
    transport = StreamTransport(broker, wait_in_broker=False)
    await kick(broker, [b"a", b"b", b"c"])
    read = await transport.read(2)  # a, b
    # "b" was acked meanwhile (another worker claimed and ran it): it is
    # not added again.
    await redis.xack("s", broker.consumer_group_name, read[1].handle[1])
    assert await transport.requeue(given(read)) == []
    entries = await redis.xrange("s")
    assert [fields[b"data"] for _, fields in entries] == [b"a", b"b", b"c", b"a"]
    pending = await redis.xpending("s", broker.consumer_group_name)
    assert pending["pending"] == 0
    assert transport.outstanding == 0
    again = await transport.read(10)
    assert [d.data for d in again] == [b"c", b"a"]
    await broker.shutdown()


async def test_list_messages_go_where_kick_pushes_in_order(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = ListQueueBroker(URL, queue_name="l", **fake)
    transport = ListTransport(broker, wait_in_broker=False)
    await kick(broker, [b"a", b"b", b"c"])
    read = await transport.read(2)
    assert [d.data for d in read] == [b"a", b"b"]
    assert await transport.requeue(given(read)) == []
    again = await transport.read(10)
    assert [d.data for d in again] == [b"c", b"a", b"b"]
    await broker.shutdown()
