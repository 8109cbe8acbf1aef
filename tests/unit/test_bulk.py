"""Bulk result writes and acks write exactly what taskiq-redis would, per message."""

from typing import Any

import fakeredis
import pytest
from taskiq import AckableMessage, BrokerMessage, TaskiqResult
from taskiq.serializers import MSGPackSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching.bulk import ack_many, store_many, stream_entry

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


def fake(server: fakeredis.FakeServer) -> dict[str, Any]:
    return {"connection_class": fakeredis.FakeAsyncRedisConnection, "server": server}


@pytest.mark.parametrize(
    "options",
    [{}, {"result_ex_time": 60, "prefix_str": "p"}, {"result_px_time": 60_000}],
)
async def test_store_many_equals_set_result(options: dict[str, Any]) -> None:
    server = fakeredis.FakeServer()
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        URL,
        serializer=MSGPackSerializer(),
        **options,
        **fake(server),
    )
    ok: TaskiqResult[Any] = TaskiqResult(
        is_err=False, log=None, return_value=[1, 2], execution_time=0.5, labels={}
    )
    failed: TaskiqResult[Any] = TaskiqResult(
        is_err=True,
        log=None,
        return_value=None,
        execution_time=0.1,
        error=ValueError("bad"),
        labels={"x": "1"},
    )
    # Shared result objects are written once per key: one value for all, or
    # several values, each key with its own.
    await store_many(backend, [("bulk-ok", ok), ("bulk-err", failed), ("bulk-ok2", ok)])
    await store_many(backend, [("same-1", ok), ("same-2", ok)])
    await backend.set_result("one-ok", ok)
    await backend.set_result("one-err", failed)
    redis = fakeredis.FakeAsyncRedis(server=server)
    prefix = f"{options['prefix_str']}:" if "prefix_str" in options else ""
    pairs = [
        ("bulk-ok", "one-ok"),
        ("bulk-err", "one-err"),
        ("bulk-ok2", "one-ok"),
        ("same-1", "one-ok"),
        ("same-2", "one-ok"),
    ]
    for bulk, single in pairs:
        assert await redis.get(prefix + bulk) == await redis.get(prefix + single)
        assert (
            await redis.pttl(prefix + bulk) // 1000
            == await redis.pttl(prefix + single) // 1000
        )
        read = await backend.get_result(bulk)
        assert read.is_err == (single == "one-err")
    assert (await backend.get_result("bulk-ok")).return_value == [1, 2]
    await redis.aclose()
    await backend.shutdown()


async def test_stream_acks_are_recognised_and_sent_in_one_xack() -> None:
    server = fakeredis.FakeServer()
    broker = RedisStreamBroker(URL, queue_name="bulk-acks", **fake(server))
    await broker.startup()
    for i in range(5):
        message = BrokerMessage(task_id=str(i), task_name="t", message=b"m", labels={})
        await broker.kick(message)
    listener = broker.listen()
    deliveries = [await anext(listener) for _ in range(5)]
    assert all(isinstance(d, AckableMessage) for d in deliveries)
    acks = [d.ack for d in deliveries if isinstance(d, AckableMessage)]
    entries = [stream_entry(ack) for ack in acks]
    assert all(entry is not None and entry[0] == "bulk-acks" for entry in entries)
    redis = fakeredis.FakeAsyncRedis(server=server)
    assert (await redis.xpending("bulk-acks", "taskiq"))["pending"] == 5
    await ack_many(broker, acks[:3])
    assert (await redis.xpending("bulk-acks", "taskiq"))["pending"] == 2
    calls: list[int] = []

    async def other_ack() -> None:
        calls.append(1)

    assert stream_entry(other_ack) is None
    await ack_many(broker, [*acks[3:], other_ack])
    assert (await redis.xpending("bulk-acks", "taskiq"))["pending"] == 0
    assert calls == [1]
    await redis.aclose()
    await broker.shutdown()
