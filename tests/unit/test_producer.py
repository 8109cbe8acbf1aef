"""kiq_many: many ordinary messages, sent in few round trips."""

import dataclasses
import datetime
import decimal
import json
import uuid
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel
from taskiq import BrokerMessage, InMemoryBroker, TaskiqMessage, TaskiqMiddleware
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.exceptions import SendTaskError
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task, producer
from taskiq_batching.transports import Sender, redis_list
from taskiq_batching.transports.redis_sender import ListSender, StreamSender
from tests.helpers import Recorder, memory_broker, running_worker

pytestmark = pytest.mark.timeout(60)

URL = "redis://fake:6379/0"


class Row(BaseModel):
    id: int
    name: str


class Capture:
    """A transport's ``send``, recording what it is given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[BrokerMessage] = []
        self.calls = 0
        self.error = error

    async def send(self, messages: Sequence[BrokerMessage]) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.sent.extend(messages)


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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An idle list is polled this often: the worker stops sooner.
    monkeypatch.setattr(redis_list, "BLOCK_SECONDS", 0.05)
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
    capture = Capture()
    encodes = []
    fast = producer._encode

    def spy(*args: Any) -> Any:
        encodes.append(1)
        return fast(*args)

    monkeypatch.setattr(producer, "_sender", lambda _: capture)
    monkeypatch.setattr(producer, "_encode", spy)
    tasks = await handler.kiq_many(items, tenant="t")
    assert encodes == [1]  # the path without a TaskiqMessage per item
    assert capture.calls == 1
    sent = capture.sent
    assert [message.task_id for message in sent] == [t.task_id for t in tasks]
    for item, message in zip(items, sent, strict=True):
        kicker = handler.kicker().with_task_id(message.task_id)
        expected = broker.formatter.dumps(kicker._prepare_message(item, tenant="t"))
        assert message.message == expected.message
        assert message.labels == expected.labels
        assert message.task_name == expected.task_name


class Reversed(TaskiqFormatter):
    """A formatter of its own: the JSON text reversed."""

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        return BrokerMessage(
            task_id=message.task_id,
            task_name=message.task_name,
            message=json.dumps(message.model_dump(mode="json")).encode()[::-1],
            labels=message.labels,
        )

    def loads(self, message: bytes) -> TaskiqMessage:
        return TaskiqMessage.model_validate_json(message[::-1])


async def test_kiq_many_with_another_formatter_encodes_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = memory_broker().with_formatter(Reversed())

    @batch_task(broker, batch_size=10)
    async def handler(items: list[Row]) -> None: ...

    capture = Capture()
    monkeypatch.setattr(producer, "_sender", lambda _: capture)
    rows = [Row(id=i, name=f"r{i}") for i in range(3)]
    tasks = await handler.kiq_many(rows)
    assert [m.task_id for m in capture.sent] == [t.task_id for t in tasks]
    for row, message in zip(rows, capture.sent, strict=True):
        kicker = handler.kicker().with_task_id(message.task_id)
        expected = broker.formatter.dumps(kicker._prepare_message(row))
        assert message.message == expected.message
        assert broker.formatter.loads(message.message).args == [row.model_dump()]


async def test_kiq_many_raises_send_task_error_when_the_send_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = SendCounter()
    broker = memory_broker().with_middlewares(counter)

    @batch_task(broker, batch_size=10)
    async def handler(items: list[int]) -> None: ...

    failure = ConnectionError("broker away")
    monkeypatch.setattr(producer, "_sender", lambda _: Capture(failure))
    with pytest.raises(SendTaskError) as info:
        await handler.kiq_many(range(3))
    assert info.value.__cause__ is failure
    assert len(counter.pre) == 3
    assert counter.post == []  # nothing was sent


async def test_kiq_many_of_nothing_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=10)
    async def handler(items: list[int]) -> None: ...

    capture = Capture()
    monkeypatch.setattr(producer, "_sender", lambda _: capture)
    assert await handler.kiq_many([]) == []
    assert capture.calls == 0


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: InMemoryBroker(), Sender),
        (lambda: RedisStreamBroker(URL), StreamSender),
        (lambda: ListQueueBroker(URL), ListSender),
    ],
)
def test_each_broker_sends_with_its_own_sender_made_once(
    make: Any, kind: type[Any]
) -> None:
    broker = make()
    sender = producer._sender(broker)
    assert type(sender) is kind
    assert producer._sender(broker) is sender
    assert producer._sender(make()) is not sender
