"""No head-of-line blocking behind a backlog, with a real ``taskiq worker`` (issue 17).

Issue 17's case, scaled down: a backlog of a slow batched task (batch_size
2, ``BATCH_SECONDS`` a batch) far past what a worker holds and parks
(parking made small: ``hol_app``), then a plain task and another batched
task. Before, nothing behind the backlog was read until the backlog had
nearly run (the worker stopped reading once parking was full). Now the
plain task's result comes while most of the backlog still waits, and
every item of the backlog runs exactly once (once the results are in, the
rest of the backlog runs without its delay: only its count matters then).
"""

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncTaskiqTask
from taskiq.kicker import AsyncKicker

from tests.integration.hol import KINDS, make_broker
from tests.integration.workers import Worker, eventually
from tests.redis_keys import delete_matching

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BACKLOG = 60
BATCH_SECONDS = 0.3


@pytest.mark.parametrize("kind", KINDS)
async def test_a_plain_task_behind_a_backlog_runs_while_the_backlog_waits(
    kind: str, redis_url: str, rabbitmq_url: str, nats_url: str, tmp_path: Path
) -> None:
    queue = f"tb-hol-{uuid.uuid4().hex[:10]}"
    env = {
        "TB_BROKER": kind,
        "TB_QUEUE": queue,
        "REDIS_URL": redis_url,
        "RABBITMQ_URL": rabbitmq_url,
        "NATS_URL": nats_url,
        "TB_BATCH_SECONDS": str(BATCH_SECONDS),
    }
    async with _cleaned(kind, queue, redis_url, rabbitmq_url, nats_url) as redis:
        producer = make_broker(kind, redis_url, queue)
        await producer.startup()  # declares the stream, queue or consumer
        worker = Worker(
            env, tmp_path / "worker.log", app="tests.integration.hol_app:broker"
        )
        try:
            await eventually(
                lambda: _started(redis, queue), 30, f"started: {worker.output()}"
            )
            for n in range(BACKLOG):
                await _kick(producer, "slow", n)
            sent = time.monotonic()
            plain = await _kick(producer, "plain", 7)
            other = await _kick(producer, "other", 5)
            assert (await plain.wait_result(timeout=60)).return_value == 7
            latency = time.monotonic() - sent
            ran = await redis.llen(f"{queue}:ran")
            print(f"{kind}: plain result {latency:.2f} s after its send, {ran} ran")
            # Before: all but what the worker held and parked had run (40 or
            # more); the whole backlog takes BACKLOG / 2 * BATCH_SECONDS.
            assert ran <= BACKLOG // 3, worker.output()
            assert (await other.wait_result(timeout=60)).return_value == 5
            await redis.set(f"{queue}:fast", 1)

            async def all_ran() -> bool:
                return bool(await redis.llen(f"{queue}:ran") >= BACKLOG)

            await eventually(all_ran, 60, f"the backlog ran: {worker.output()}")
            worker.stop(timeout=30)
            items = sorted(int(n) for n in await redis.lrange(f"{queue}:ran", 0, -1))
            assert items == list(range(BACKLOG)), "each item exactly once"
            assert worker.crashes() == 0, worker.output()
        finally:
            worker.kill()
            await producer.shutdown()


async def _kick(producer: AsyncBroker, task_name: str, value: int) -> Any:
    """Send as a plain taskiq producer does (by name)."""
    kicker: AsyncKicker[Any, Any] = AsyncKicker(task_name, producer, {})
    task: AsyncTaskiqTask[Any] = await kicker.kiq(value)
    return task


async def _started(redis: Redis, queue: str) -> bool:
    return bool(await redis.llen(f"{queue}:pids"))


@contextlib.asynccontextmanager
async def _cleaned(
    kind: str, queue: str, redis_url: str, rabbitmq_url: str, nats_url: str
) -> AsyncIterator[Redis]:
    """Redis for the test; afterwards its keys, queues or stream deleted."""
    redis = Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await delete_matching(redis, f"{queue}*")
        await redis.aclose()
        if kind == "rabbit":
            connection = await aio_pika.connect(rabbitmq_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(queue)
                await channel.queue_delete(f"{queue}.dead_letter")
                await channel.exchange_delete(queue)
        if kind == "nats":
            client = await nats.connect(nats_url)
            try:
                with contextlib.suppress(NotFoundError):
                    await client.jetstream().delete_stream(queue)
            finally:
                await client.close()
