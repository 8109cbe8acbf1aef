"""The packed stream reader against the real Redis (which has ``cmsgpack``)."""

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import BrokerMessage
from taskiq_redis import RedisStreamBroker

from taskiq_batching.bulk import ack_many
from taskiq_batching.fetch import Delivery, Fetched, listener_for
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


def fetched(chunks: list[list[Delivery]]) -> list[Fetched]:
    return [d for chunk in chunks for d in chunk if isinstance(d, Fetched)]


async def test_packed_reads_give_every_stream_entry_once_in_order(
    redis_url: str, redis: Redis, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
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
    before = await script_calls(redis)
    chunks = listener_for(broker, broker.listen)()
    read: list[list[Delivery]] = []
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        while len(fetched(read)) < len(main) + len(side):
            read.append(await anext(chunks))
    deliveries = fetched(read)
    by_stream: dict[str, list[bytes]] = {queue: [], extra: []}
    for delivery in deliveries:
        by_stream[delivery.ack.stream_entry[0]].append(delivery.data)
    assert by_stream == {queue: main, extra: side}
    # COUNT applies to each stream of one XREADGROUP.
    per_stream = [
        sum(1 for d in fetched([chunk]) if d.ack.stream_entry[0] == stream)
        for chunk in read
        for stream in (queue, extra)
    ]
    assert max(per_stream) == 40
    assert await script_calls(redis) - before >= len(read)
    assert not [r for r in caplog.records if "packed-read script" in r.message]
    for stream, count in ((queue, len(main)), (extra, len(side))):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == count
    await ack_many(broker, [d.ack for d in deliveries])
    for stream in (queue, extra):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == 0
    await chunks.aclose()
    await redis.delete(extra)
    await broker.shutdown()


async def test_an_idle_reader_blocks_then_wakes_for_a_new_entry(
    redis_url: str, redis: Redis, queue: str
) -> None:
    broker = RedisStreamBroker(redis_url, queue_name=queue, xread_block=10_000)
    await broker.startup()

    async def blocked() -> int:
        return int((await redis.info("clients"))["blocked_clients"])

    already = await blocked()
    chunks = listener_for(broker, broker.listen)()
    waiting = asyncio.ensure_future(anext(chunks))

    async def reader_blocks() -> bool:
        return await blocked() > already

    await eventually(reader_blocks, 5, "the reader blocks in XREADGROUP")
    assert not waiting.done()
    await kick(broker, queue, [b"late"])
    chunk = await asyncio.wait_for(waiting, timeout=5)
    assert [d.data for d in chunk if isinstance(d, Fetched)] == [b"late"]
    await chunks.aclose()
    await broker.shutdown()
