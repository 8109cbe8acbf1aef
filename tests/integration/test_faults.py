"""Crashes and shutdowns of real workers under load, on the real Redis.

Every test prints what it measured (run with ``-s`` to see it); the figures
are quoted in docs/guarantees.md.
"""

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from tests.integration.worker_app import make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def counts(redis: Redis, queue: str) -> tuple[int, int]:
    """(distinct items processed, processings in all)."""
    distinct = await redis.scard(f"{queue}:items")
    total = int(await redis.get(f"{queue}:processed") or 0)
    return distinct, total


async def pending(redis: Redis, queue: str) -> int:
    return int((await redis.xpending(queue, "taskiq"))["pending"])


async def test_kill_9_at_three_random_points_loses_nothing(
    redis_url: str,
    redis: Redis,
    queue: str,
    start_worker: Callable[..., Worker],
) -> None:
    seed = int(os.environ.get("TB_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    items = 5000
    settings: dict[str, Any] = {
        "kind": "stream",
        "serializer": "json",
        "batch_size": 100,
        "batch_timeout": 0.5,
        "idle_timeout_ms": 2000,  # a dead worker's entries come back after 2 s
        "batch_delay": 0.02,  # batches take time: kills land mid-batch too
    }
    producer = make_broker(redis_url, "stream", queue, "json")
    await producer.startup()
    start_worker(**settings)  # the replacement, never killed
    send: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    sent = 0
    # Redis lists a consumer once a read served it something.
    while not await _consumers_at_least(redis, queue, 1):
        await send.kiq(sent)
        sent += 1
    kill_points = sorted(rng.sample(range(300, items - 1000), 3))
    kills: list[int] = []
    for point in kill_points:
        known = {c["name"] for c in await redis.xinfo_consumers(queue, "taskiq")}
        victim = start_worker(**settings)
        # Kill once past the point and while the victim holds messages
        # (buffered or in a running batch), sending all along.
        while sent < items and (
            sent < point or not await _new_consumer_holds(redis, queue, known)
        ):
            await send.kiq(sent)
            sent += 1
        victim.kill9()
        kills.append(sent)
    start_worker(**settings)  # the victim's restart
    while sent < items:
        await send.kiq(sent)
        sent += 1
    # No more traffic: the last victim's entries must come back on their own.
    await eventually(lambda: _at_least(counts(redis, queue), items), 90)
    await eventually(lambda: _is_zero(pending(redis, queue)), 30)
    distinct, total = await counts(redis, queue)
    print(
        f"\nkill -9 x3 (seed {seed}, kills after {kills} sends): "
        f"{distinct}/{items} items processed, {total - items} duplicate(s)",
    )
    assert distinct == items
    await producer.shutdown()


async def test_sigterm_under_load_acks_everything_taken(
    redis_url: str,
    redis: Redis,
    queue: str,
    start_worker: Callable[..., Worker],
) -> None:
    items = 5000
    producer = make_broker(redis_url, "stream", queue, "json")
    await producer.startup()
    send: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    for item in range(items):  # all queued before the worker starts
        await send.kiq(item)
    settings: dict[str, Any] = {
        "kind": "stream",
        "serializer": "json",
        "batch_size": 100,
        "batch_timeout": 3600,  # shutdown must not wait for it
        "batch_delay": 0.02,
    }
    worker = start_worker(**settings)
    await eventually(lambda: _at_least(counts(redis, queue), 1000), 60)
    took = worker.stop(timeout=20)
    assert worker.process.returncode == 0, worker.output()
    assert took < 10, f"exit took {took:.1f} s"
    assert await pending(redis, queue) == 0, "a message taken was left unacked"
    distinct, total = await counts(redis, queue)
    assert distinct == total  # nothing ran twice
    print(
        f"\nSIGTERM under load: exit in {took:.2f} s, {distinct} processed, 0 pending"
    )
    # The rest waits in the stream for the next worker.
    start_worker(**settings)
    await eventually(lambda: _at_least(counts(redis, queue), items), 90)
    await producer.shutdown()


async def _new_consumer_holds(redis: Redis, queue: str, known: set[Any]) -> bool:
    consumers = await redis.xinfo_consumers(queue, "taskiq")
    return any(c["name"] not in known and c["pending"] > 0 for c in consumers)


async def _consumers_at_least(redis: Redis, queue: str, count: int) -> bool:
    return len(await redis.xinfo_consumers(queue, "taskiq")) >= count


async def _at_least(value: Any, target: int) -> bool:
    distinct, _ = await value
    return bool(distinct >= target)


async def _is_zero(value: Any) -> bool:
    return bool(await value == 0)
