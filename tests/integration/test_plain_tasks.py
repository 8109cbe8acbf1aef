"""Plain tasks under a real ``taskiq worker`` with the plugin: as without it."""

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker
from taskiq_redis import ListQueueBroker

from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def worker_of(redis_url: str, queue: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        env = {"REDIS_URL": redis_url, "TB_QUEUE": queue}
        worker = Worker(
            env,
            tmp_path / "worker.log",
            app="tests.integration.plain_app:broker",
            args=args,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


async def test_stop_runs_plain_tasks_within_the_limits_and_leaves_the_rest(
    redis_url: str, redis: Redis, queue: str, worker_of: Any
) -> None:
    producer = ListQueueBroker(redis_url, queue_name=queue)
    slow: AsyncKicker[Any, Any] = AsyncKicker("slow", producer, {})
    for item in range(20):
        await slow.kiq(item)
    worker = worker_of("--max-async-tasks", "1")

    async def one_ran() -> bool:
        return bool(await redis.llen(f"{queue}:ran"))

    await eventually(one_ran, 30, "a first plain task ran")
    worker.stop(timeout=20, signum=signal.SIGTERM)
    assert worker.process.returncode == 0, worker.output()
    ran = await redis.llen(f"{queue}:ran")
    left = await redis.llen(queue)
    # One at a time, as --max-async-tasks says, and the rest left in Redis
    # for another worker (before: 13 at once, the queue emptied).
    assert int(await redis.get(f"{queue}:peak") or 0) == 1
    assert ran + left == 20
    assert ran <= 5, f"{ran} ran after the stop began"
    await producer.shutdown()
