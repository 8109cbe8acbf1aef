"""The bulk readers yield what the brokers' own listeners would, in chunks.

The packed stream read needs a real Redis (``cmsgpack``): see
``tests/integration/test_stream_reader.py``. Here fakeredis, which has no
``cmsgpack``, shows the fallback losing nothing.
"""

import asyncio
import logging
from typing import Any

import fakeredis
import pytest
from taskiq import AckableMessage, BrokerMessage
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from taskiq_batching.bulk import ack_many
from taskiq_batching.fetch import (
    LIST_FETCH_COUNT,
    Delivery,
    Fetched,
    StreamAck,
    _deliveries,
    listener_for,
)
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


def fake(server: fakeredis.FakeServer) -> dict[str, Any]:
    return {"connection_class": fakeredis.FakeAsyncRedisConnection, "server": server}


async def kick(broker: Any, payloads: list[bytes]) -> None:
    for index, payload in enumerate(payloads):
        message = BrokerMessage(
            task_id=str(index), task_name="t", message=payload, labels={}
        )
        await broker.kick(message)


async def read_chunks(chunks: Any, count: int) -> list[list[Delivery]]:
    """Chunks until they hold ``count`` deliveries in all.

    A reader that has lost entries blocks on an empty queue: that fails
    after 5 s with the count it got, rather than at the test's timeout.
    """
    read: list[list[Delivery]] = []
    while (got := sum(len(chunk) for chunk in read)) < count:
        task = asyncio.ensure_future(anext(chunks))
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()  # not awaited: a blocked read may not stop at once
            pytest.fail(f"{got} of {count} messages delivered; the rest never came")
        read.append(task.result())
    return read


def data_of(delivery: Delivery) -> bytes:
    return delivery if isinstance(delivery, bytes) else delivery.data


async def test_list_reader_gives_the_same_messages_in_order_many_per_read() -> None:
    broker = ListQueueBroker(URL, queue_name="fetch", **fake(fakeredis.FakeServer()))
    payloads = [f"m{i}".encode() for i in range(250)]
    await kick(broker, payloads)
    own = broker.listen()
    assert [await anext(own) for _ in range(250)] == payloads
    await kick(broker, payloads)
    chunks = listener_for(broker, broker.listen)()
    read = await read_chunks(chunks, 250)
    assert [data_of(d) for chunk in read for d in chunk] == payloads
    assert [len(chunk) for chunk in read] == [LIST_FETCH_COUNT] * 2 + [50]
    await own.aclose()
    await chunks.aclose()
    await broker.shutdown()


async def test_stream_reader_without_cmsgpack_falls_back_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer()
    broker = RedisStreamBroker(URL, queue_name="fetch-s", **fake(server))
    await broker.startup()
    payloads = [f"m{i}".encode() for i in range(250)]
    await kick(broker, payloads)
    chunks = listener_for(broker, broker.listen)()
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        read = await read_chunks(chunks, 250)
    deliveries = [d for chunk in read for d in chunk]
    assert [data_of(d) for d in deliveries] == payloads
    assert all(len(chunk) <= 100 for chunk in read)
    # The failed script read nothing: every pending entry was delivered.
    redis = fakeredis.FakeAsyncRedis(server=server)
    assert (await redis.xpending("fetch-s", "taskiq"))["pending"] == 250
    warnings = [r for r in caplog.records if "packed-read script" in r.message]
    assert len(warnings) == 1
    acks = [d.ack for d in deliveries if isinstance(d, Fetched)]
    await ack_many(broker, acks)
    assert (await redis.xpending("fetch-s", "taskiq"))["pending"] == 0
    await chunks.aclose()
    await redis.aclose()
    await broker.shutdown()


def test_fetched_is_delivered_to_taskiq_as_an_ackable_message() -> None:
    broker = RedisStreamBroker(URL)
    fetched = Fetched(b"m", StreamAck(broker, "s", b"1-0"))
    delivered = fetched.delivered()
    assert isinstance(delivered, AckableMessage)
    assert (delivered.data, delivered.ack) == (b"m", fetched.ack)


@pytest.mark.parametrize(
    "reply",
    [
        # packed (cmsgpack): [[stream, [[id, [field, value, ...]]]]]
        [[b"s", [[b"1-0", [b"data", b"a"]], [b"2-0", [b"x", b"1", b"data", b"b"]]]]],
        # redis-py, RESP2: [[stream, [(id, {field: value})]]]
        [[b"s", [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]]],
        # redis-py, RESP3: {stream: [[(id, {field: value})]]}
        {b"s": [[(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]]},
        # redis-py, unified: {stream: [(id, {field: value})]}
        {"s": [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]},
    ],
    ids=["packed", "resp2", "resp3", "unified"],
)
def test_every_reply_shape_gives_the_same_deliveries(reply: Any) -> None:
    broker = RedisStreamBroker(URL)
    chunk = _deliveries(broker, reply)
    assert [(d.data, d.ack.stream_entry) for d in chunk if isinstance(d, Fetched)] == [
        (b"a", ("s", b"1-0")),
        (b"b", ("s", b"2-0")),
    ]


def test_an_entry_without_data_is_delivered_empty_for_taskiq_to_reject() -> None:
    broker = RedisStreamBroker(URL)
    packed = [[b"s", [[b"1-0", [b"other", b"x"]], [b"2-0", [b"data", b"ok"]]]]]
    deleted = [[b"s", [(None, None), (b"3-0", None)]]]
    assert [d.data for d in _deliveries(broker, packed) if isinstance(d, Fetched)] == [
        b"",
        b"ok",
    ]
    assert [d.data for d in _deliveries(broker, deleted) if isinstance(d, Fetched)] == [
        b""
    ]


async def test_other_brokers_are_read_one_delivery_per_chunk() -> None:
    broker = QueueBroker()
    await kick(broker, [b"a", b"b"])
    chunks = listener_for(broker, broker.listen)()
    first, second = await anext(chunks), await anext(chunks)
    assert [[data_of(d) for d in chunk] for chunk in (first, second)] == [
        [b"a"],
        [b"b"],
    ]
    await chunks.aclose()
