"""Dead workers' pending entries come back without new traffic; lossy brokers say so."""

import logging
import uuid
from typing import Any

import fakeredis
import pytest
from taskiq import AsyncTaskiqTask, TaskiqMessage
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task
from tests.helpers import Recorder, running_worker

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


def fake(server: fakeredis.FakeServer) -> dict[str, Any]:
    return {"connection_class": fakeredis.FakeAsyncRedisConnection, "server": server}


async def test_entries_of_a_dead_consumer_are_reclaimed_without_new_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer()
    broker = RedisStreamBroker(URL, queue_name="rc", idle_timeout=200, **fake(server))
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(URL, **fake(server))
    broker = broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())
    seen = Recorder()

    @batch_task(broker, batch_size=5, batch_timeout=0.05)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    await broker.startup()
    # A worker that read three messages and died before acking them.
    redis = fakeredis.FakeAsyncRedis(server=server)
    sent = []
    for item in (1, 2, 3):
        message = TaskiqMessage(
            task_id=uuid.uuid4().hex,
            task_name=handler.task_name,
            labels={},
            args=[item],
            kwargs={},
        )
        sent.append(message.task_id)
        data = broker.formatter.dumps(message).message
        await redis.xadd("rc", {b"data": data})
    await redis.xreadgroup("taskiq", "dead-worker", {"rc": ">"}, count=10)
    assert (await redis.xpending("rc", "taskiq"))["pending"] == 3

    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running_worker(broker):
        for task_id in sent:
            result = await AsyncTaskiqTask(task_id, backend).wait_result(timeout=10)
            assert result.return_value == 6
    assert seen.batches == [[1, 2, 3]]
    assert (await redis.xpending("rc", "taskiq"))["pending"] == 0
    assert "reclaimed 3 message(s)" in caplog.text
    await redis.aclose()


async def test_a_broker_without_acks_warns_once_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer()
    broker = ListQueueBroker(URL, queue_name="lq", **fake(server))
    broker = broker.with_middlewares(BatchingMiddleware())

    seen = Recorder()

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running_worker(broker):
        for item in range(6):
            await handler.kiq(item)
        while len(seen.batches) < 3:
            seen.calls.clear()
            await seen.calls.wait()
    warnings = [r for r in caplog.records if "does not acknowledge" in r.getMessage()]
    assert len(warnings) == 1
    assert "ListQueueBroker" in warnings[0].getMessage()
