"""The stream transport's reads on the real Redis.

The packed read (which needs Redis's ``cmsgpack``) is what a worker without
hiredis uses: those tests make the transport see no hiredis.
"""

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import BrokerMessage
from taskiq_redis import RedisStreamBroker

from taskiq_batching.transports import redis_common
from taskiq_batching.transports.base import Delivery
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def kick(broker: RedisStreamBroker, stream: str, payloads: list[bytes]) -> None:
    for index, payload in enumerate(payloads):
        message = BrokerMessage(
            task_id=str(index),
            task_name="t",
            message=payload,
            labels={"queue_name": stream},
        )
        await broker.kick(message)


async def script_calls(redis: Redis) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("evalsha", "eval")
    )


async def test_packed_reads_give_every_stream_entry_once_in_order(
    redis_url: str,
    redis: Redis,
    queue: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_common, "HIREDIS", False)
    extra = f"{queue}-extra"
    broker = RedisStreamBroker(
        redis_url,
        queue_name=queue,
        additional_streams={extra: ">"},
        xread_count=40,
        xread_block=200,
    )
    await broker.startup()  # the group, from "$": created before the sends
    main = [f"m{i}".encode() for i in range(150)]
    side = [f"x{i}".encode() for i in range(30)]
    await kick(broker, queue, main)
    await kick(broker, extra, side)
    transport = StreamTransport(broker)
    before = await script_calls(redis)
    chunks: list[list[Delivery]] = []
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        while sum(len(c) for c in chunks) < len(main) + len(side):
            chunk = await transport.read(100)
            assert chunk, "an entry was lost"
            chunks.append(chunk)
    assert transport.reads.packed
    deliveries = [d for chunk in chunks for d in chunk]
    by_stream: dict[str, list[bytes]] = {queue: [], extra: []}
    for delivery in deliveries:
        by_stream[delivery.handle[0]].append(delivery.data)
    assert by_stream == {queue: main, extra: side}
    # COUNT applies to each stream of one XREADGROUP.
    per_stream = [
        sum(1 for d in chunk if d.handle[0] == stream)
        for chunk in chunks
        for stream in (queue, extra)
    ]
    assert max(per_stream) == 40
    assert await script_calls(redis) - before >= len(chunks)
    assert not [r for r in caplog.records if "packed-read script" in r.getMessage()]
    for stream, count in ((queue, len(main)), (extra, len(side))):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == count
    await transport.ack([d.handle for d in deliveries])
    for stream in (queue, extra):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == 0
    await transport.close()
    await broker.shutdown()


async def test_an_idle_reader_blocks_then_wakes_for_a_new_entry(
    redis_url: str, redis: Redis, queue: str
) -> None:
    broker = RedisStreamBroker(redis_url, queue_name=queue, xread_block=10_000)
    await broker.startup()
    transport = StreamTransport(broker)

    async def blocked() -> int:
        return int((await redis.info("clients"))["blocked_clients"])

    already = await blocked()

    async def read_one() -> list[Delivery]:
        while not (chunk := await transport.read(10)):
            pass
        return chunk

    waiting = asyncio.ensure_future(read_one())

    async def reader_blocks() -> bool:
        return await blocked() > already

    await eventually(reader_blocks, 5, "the reader blocks in XREADGROUP")
    assert not waiting.done()
    await kick(broker, queue, [b"late"])
    chunk = await asyncio.wait_for(waiting, timeout=5)
    assert [d.data for d in chunk] == [b"late"]
    await transport.close()
    await broker.shutdown()


async def test_a_packed_read_recovers_a_lost_group(
    redis_url: str,
    redis: Redis,
    queue: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_common, "HIREDIS", False)
    broker = RedisStreamBroker(redis_url, queue_name=queue, xread_block=100)
    await broker.startup()
    transport = StreamTransport(broker)
    await kick(broker, queue, [b"before"])
    first = await transport.read(10)
    await transport.ack([d.handle for d in first])
    await redis.xgroup_destroy(queue, "taskiq")
    await kick(broker, queue, [b"after"])
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        chunk = await transport.read(10)
    assert [d.data for d in chunk] == [b"after"]
    assert transport.reads.packed
    assert "was missing" in caplog.text
    await transport.close()
    await broker.shutdown()
