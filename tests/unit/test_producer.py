"""kiq_many: many ordinary messages, sent in few round trips."""

import dataclasses
import datetime
import decimal
import uuid
from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel
from taskiq import BrokerMessage, TaskiqMessage, TaskiqMiddleware
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task, producer
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


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.datetime


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_kiq_many_without_send_middlewares_encodes_what_kiq_would(
    serializer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = JSONSerializer() if serializer == "json" else MSGPackSerializer()
    broker = memory_broker().with_serializer(chosen)

    @batch_task(broker, batch_size=10, retry_on_error=True)
    async def handler(items: list[Any], tenant: str) -> None: ...

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    items: list[Any] = [
        1,
        "text",
        {"nested": [1, 2.5, None]},
        Row(id=1, name="r"),
        Point(3, when),
        when,
        uuid.UUID(int=7),
        decimal.Decimal("1.50"),
        float("nan"),
        (1, 2),
    ]
    sent: list[BrokerMessage] = []

    async def capture(_: Any, messages: list[BrokerMessage]) -> None:
        sent.extend(messages)

    encodes = []
    fast = producer._encode

    def spy(*args: Any) -> Any:
        encodes.append(1)
        return fast(*args)

    monkeypatch.setattr(producer, "kick_many", capture)
    monkeypatch.setattr(producer, "_encode", spy)
    tasks = await handler.kiq_many(items, tenant="t")
    assert encodes == [1]  # the path without a TaskiqMessage per item
    assert [message.task_id for message in sent] == [t.task_id for t in tasks]
    for item, message in zip(items, sent, strict=True):
        kicker = handler.kicker().with_task_id(message.task_id)
        expected = broker.formatter.dumps(kicker._prepare_message(item, tenant="t"))
        assert message.message == expected.message
        assert message.labels == expected.labels
        assert message.task_name == expected.task_name
