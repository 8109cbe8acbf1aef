"""A stream take reserves the key it chose, and its worker reads the batch.

The take script (``redis_batches_lua.TAKE``) decides and reserves; the
worker then reads with a plain ``XREADGROUP`` and releases the key. What
stands for a worker that died, or stalled, between the two.
"""

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from taskiq_batching.transports.redis_batches_lua import HOLD_MS, TAKE
from tests.integration.stream_batches import (
    StreamSource,
    clean,
    declare,
    make_broker,
    stream_sources,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: The key of a task without ``batch_key``.
KEY = "-"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-sr"


async def _server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _pending(redis: Redis, src: StreamSource) -> int:
    summary: Any = await redis.xpending(src.names.stream(KEY), src.transport.group)
    return int(summary["pending"])


async def test_a_key_another_worker_reserved_is_passed_over_until_it_runs_out(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 5, 30)
    task = declare(make_broker(redis_url, queue), 5, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(5))]
        now = await _server_ms(redis)
        field = f"7:another{KEY}"  # the consumer's length, its name, the key
        await redis.hset(src.names.taking, field, f"{now + 60_000} 5 f")
        held = await src.batches.take(src.spec, 1)
        assert held.batches == []
        assert held.wait_seconds == 0  # it is being read: look again soon
        await redis.hset(src.names.taking, field, f"{now - 1} 5 f")  # ran out
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == sent
        assert got.batches[0].reason == "size"
        assert await redis.hlen(src.names.taking) == 0  # released after the read
    finally:
        await clean(redis, src.names, queue)


def _killed(src: StreamSource) -> None:
    """The source's worker dies between its take script and its read."""

    def killed(**_: Any) -> Any:
        raise RuntimeError("killed between its take and its read")

    src.batches.redis.pipeline = killed


async def test_a_full_batch_past_what_another_worker_reserved_is_taken_at_once(
    redis_url: str, queue: str, redis: Redis
) -> None:
    reading, other = stream_sources(redis_url, queue, 2, 5, 30)
    task = declare(make_broker(redis_url, queue), 5, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(12))]
        _killed(reading)  # it stays between its take and its read
        with pytest.raises(RuntimeError, match="killed"):
            await reading.batches.take(reading.spec, 1)
        got = await other.batches.take(other.spec, 1)
        assert task_ids(got.batches[0]) == sent[:5]  # 5 of the 12 are reserved
        assert got.batches[0].reason == "size"
        rest = await other.batches.take(other.spec, 1)
        assert rest.batches == []  # 2 past the 5 reserved: wait for the read
        assert rest.wait_seconds == 0
    finally:
        await clean(redis, other.names, queue)


async def test_a_worker_dead_between_its_take_and_its_read_delays_the_key_by_hold_ms(
    redis_url: str, queue: str, redis: Redis
) -> None:
    dead, alive = stream_sources(redis_url, queue, 2, 5, 30)
    task = declare(make_broker(redis_url, queue), 5, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(5))]
        _killed(dead)
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="killed"):
            await dead.batches.take(dead.spec, 1)
        assert await _pending(redis, dead) == 0  # nothing read: nothing to claim
        deadline = began + HOLD_MS / 1000 + 10
        while True:
            got = await alive.batches.take(alive.spec, 1)
            if got.batches or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        waited = time.monotonic() - began
        assert task_ids(got.batches[0]) == sent  # whole, once, without a claim
        assert got.batches[0].reason == "size"
        assert waited < HOLD_MS / 1000 + 1
    finally:
        await clean(redis, alive.names, queue)


async def test_a_take_whose_reply_came_late_reads_nothing_and_releases_its_key(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 5, 30)
    task = declare(make_broker(redis_url, queue), 5, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(5))]
        real = src.batches._take = src.batches.redis.register_script(TAKE)

        async def stalled(**options: Any) -> Any:
            reply = await real(**options)
            # The event loop stalls past half the reservation: the key may
            # be another worker's by the time a read would reach Redis.
            await asyncio.sleep(HOLD_MS / 2000)
            return reply

        src.batches._take = stalled
        late = await src.batches.take(src.spec, 1)
        assert late.batches == []
        assert late.wait_seconds == 0  # take again at once
        assert await _pending(redis, src) == 0
        assert await redis.hlen(src.names.taking) == 0
        src.batches._take = real
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == sent
    finally:
        await clean(redis, src.names, queue)
