"""The app a real ``taskiq worker`` runs in the head-of-line tests (issue 17).

Configured by ``TB_BROKER`` (``stream``, ``list``: taskiq-redis; ``rabbit``:
taskiq-aio-pika; ``nats``: taskiq-nats's pull-based JetStream broker),
``REDIS_URL``, ``RABBITMQ_URL``, ``NATS_URL`` and ``TB_QUEUE``. Results go
to the real Redis. Parking is made small (``TB_PARKED`` messages), so a
small backlog of ``slow`` is past its bounds.

``slow`` takes ``TB_BATCH_SECONDS`` per batch (no time once the test has
set ``{queue}:fast``: what remains of the backlog then only has to run
once, not slowly) and pushes each item it ran to ``{queue}:ran``; each
worker process pushes its pid to ``{queue}:pids``.
"""

import asyncio
import os

from redis.asyncio import Redis
from taskiq import TaskiqEvents, TaskiqState

from taskiq_batching import batch_task
from taskiq_batching.worker import parking
from tests.integration.hol import make_broker

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-hol")
BATCH_SECONDS = float(os.environ.get("TB_BATCH_SECONDS", "0.5"))
PARKED = int(os.environ.get("TB_PARKED", "4"))

# Parking's bounds are constants (not settings): small here, so that the
# backlog of a test is past them.
parking.PARK_LIMIT = parking.PARK_LIMIT_UNACKED = PARKED


broker = make_broker(os.environ.get("TB_BROKER", "stream"), REDIS_URL, QUEUE)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def started(state: TaskiqState) -> None:
    """Record this worker process's pid."""
    async with Redis.from_url(REDIS_URL) as redis:
        await redis.rpush(f"{QUEUE}:pids", os.getpid())


_log = Redis.from_url(REDIS_URL)


@batch_task(broker, task_name="slow", batch_size=2, batch_timeout=0.1)
async def slow(items: list[int]) -> int:
    """A slow batched task: its backlog is what the others queue behind."""
    if not await _log.exists(f"{QUEUE}:fast"):
        await asyncio.sleep(BATCH_SECONDS)
    await _log.rpush(f"{QUEUE}:ran", *items)
    return len(items)


@batch_task(broker, task_name="other", batch_size=1)
async def other(items: list[int]) -> int:
    """Another batched task, queued behind the backlog too."""
    return sum(items)


@broker.task(task_name="plain")
async def plain(value: int) -> int:
    """A plain task queued behind the backlog."""
    return value
