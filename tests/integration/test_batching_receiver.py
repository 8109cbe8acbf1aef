"""``taskiq worker --receiver taskiq_batching:BatchingReceiver`` on the real Redis."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from tests.integration.test_redis_worker import batches
from tests.integration.worker_app import make_broker
from tests.integration.workers import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECEIVER = "taskiq_batching:BatchingReceiver"


@pytest.fixture
def worker(redis_url: str, queue: str, tmp_path: Path) -> Iterator[Worker]:
    env = {
        "REDIS_URL": redis_url,
        "TB_BROKER": "stream",
        "TB_QUEUE": queue,
        "TB_SERIALIZER": "json",
        "TB_BATCH_SIZE": "10",
        "TB_BATCH_TIMEOUT": "30",
    }
    started = Worker(
        env,
        tmp_path / "worker.log",
        app="tests.integration.receiver_app:broker",
        args=("--receiver", RECEIVER),
    )
    yield started
    started.kill()


async def test_batches_run_and_plain_tasks_are_untouched(
    redis_url: str, redis: Redis, queue: str, worker: Worker
) -> None:
    producer = make_broker(redis_url, "stream", queue, "json")
    await producer.startup()
    collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    echo: AsyncKicker[Any, Any] = AsyncKicker("echo", producer, {})
    sent = [await collect.kiq(i) for i in range(30)]
    plain = [await echo.kiq(i) for i in range(5)]
    for item, task in enumerate(sent):
        result = await task.wait_result(timeout=60, check_interval=0.05)
        assert not result.is_err, result.error
        assert item in result.return_value
        assert len(result.return_value) == 10
    for value, task in enumerate(plain):
        result = await task.wait_result(timeout=60, check_interval=0.05)
        assert not result.is_err, result.error
        assert result.return_value == value
    recorded = await batches(redis, queue)
    assert [b["size"] for b in recorded] == [10, 10, 10], worker.output()
    assert {b["reason"] for b in recorded} == {"size"}
    assert worker.stop(timeout=15) < 15
    assert worker.process.returncode == 0, worker.output()
    assert "not called by a taskiq Receiver" not in worker.output()
    await producer.shutdown()
