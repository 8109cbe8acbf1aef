"""kiq_many: many ordinary messages, sent in few round trips."""

from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel
from taskiq import TaskiqMessage, TaskiqMiddleware
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task
from tests.helpers import Recorder, memory_broker, running_worker

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


class Row(BaseModel):
    id: int
    name: str


class SendCounter(TaskiqMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.pre: list[str] = []
        self.post: list[str] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        message.labels["stamped"] = "yes"
        self.pre.append(message.task_id)
        return message

    def post_send(self, message: TaskiqMessage) -> None:
        self.post.append(message.task_id)


@pytest.mark.parametrize("broker_class", [RedisStreamBroker, ListQueueBroker])
async def test_kiq_many_on_redis_brokers(
    broker_class: type[RedisStreamBroker] | type[ListQueueBroker],
) -> None:
    server = fakeredis.FakeServer()
    fake: dict[str, Any] = {
        "connection_class": fakeredis.FakeAsyncRedisConnection,
        "server": server,
    }
    counter = SendCounter()
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(URL, **fake)
    broker = (
        broker_class(URL, queue_name="many", **fake)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware(), counter)
    )
    seen = Recorder()

    @batch_task(broker, batch_size=50, batch_timeout=5)
    async def total(items: list[int], tenant: str) -> str:
        seen.record(items)
        return f"{tenant}:{sum(items)}"

    await broker.startup()
    async with running_worker(broker):
        sent = await total.kiq_many(range(100), tenant="t")
        results = [await task.wait_result(timeout=10) for task in sent]
    assert len({task.task_id for task in sent}) == 100
    assert counter.pre == counter.post == [task.task_id for task in sent]
    assert seen.batches == [list(range(50)), list(range(50, 100))]
    for index, result in enumerate(results):
        assert result.return_value == f"t:{sum(seen.batches[index // 50])}"
        assert result.labels["stamped"] == "yes"


async def test_kiq_many_on_other_brokers_kicks_each_message() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=10)
    async def total(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    await broker.startup()
    sent = await total.kiq_many(range(10))
    await broker.wait_all()
    assert seen.batches == [list(range(10))]
    assert [(await t.wait_result(timeout=1)).return_value for t in sent] == [45] * 10
    await broker.shutdown()


class Counted(TaskiqMiddleware):
    """Mutates each message it sees, so a shared or reused message would show."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[TaskiqMessage] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        message.labels["sends"] = int(message.labels.get("sends", 0)) + 1
        message.kwargs["seen"] = True
        self.seen.append(message)
        return message


async def test_kiq_many_builds_exactly_what_kiq_builds() -> None:
    counted = Counted()
    broker = memory_broker().with_middlewares(counted)

    @batch_task(broker, batch_size=10, timeout=5)
    async def handler(items: list[Row], tenant: str) -> None: ...

    rows = [Row(id=i, name=f"r{i}") for i in range(3)]
    await broker.startup()
    await handler.kiq(rows[0], tenant="t")
    await handler.kiq_many(rows, tenant="t")
    await broker.shutdown()
    single, *many = counted.seen
    assert len({m.task_id for m in counted.seen}) == 4
    for index, message in enumerate(many):
        assert message.labels == single.labels
        assert message.labels["sends"] == 1
        assert message.args == [rows[index].model_dump(mode="json")]
        assert message.kwargs == single.kwargs == {"tenant": "t", "seen": True}
        assert message.labels_types == single.labels_types
