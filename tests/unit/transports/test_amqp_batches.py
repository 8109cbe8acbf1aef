"""The RabbitMQ task queues' names and the transport's prefetch accounting."""

from collections import Counter
from typing import Any

from taskiq_aio_pika import AioPikaBroker, Queue

from taskiq_batching.core.analysis import analyse
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.amqp_batches import AmqpBatches
from taskiq_batching.transports.amqp_queues import (
    MAX_NAME_BYTES,
    batch_queue_name,
)
from taskiq_batching.transports.delivery import Delivery


async def _ack(handles: Any) -> None:
    raise AssertionError("not acked here")


def test_a_task_queue_is_named_after_the_brokers_queue_and_the_task() -> None:
    assert batch_queue_name("jobs", "app:collect") == "jobs.batch.app:collect"
    long_task = "t" * 300
    name = batch_queue_name("jobs", long_task)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.startswith("jobs.batch.")
    assert name != batch_queue_name("jobs", long_task + "x")
    broker = AioPikaBroker("amqp://nowhere/", task_queues=[Queue(name="jobs")])
    assert AmqpBatches(broker, _ack).queue_of("collect") == "jobs.batch.collect"


def test_only_the_main_consumers_count_unless_a_task_consumer_is_full() -> None:
    batches = AmqpBatches(AioPikaBroker("amqp://nowhere/"), _ack)
    batches.limits["task"] = 200
    # A task's consumer may hold more than the main prefetch (10).
    assert batches.outstanding(Counter({"main": 3, "task": 150}), 10) == 3
    # Full: nothing more comes until acks, so buffers must flush.
    assert batches.outstanding(Counter({"main": 3, "task": 200}), 10) == 10
    assert batches.outstanding(Counter({"main": 3, "task": 200}), None) == 3
    assert batches.waited(Delivery(b"", (object(), 1, "task")))
    assert not batches.waited(Delivery(b"", (object(), 1, "main")))
    assert not batches.waited(Delivery(b"", None))


async def collect(items: list[int]) -> None: ...


class FakeChannel:
    """Records the prefetch set and the queues declared on it."""

    def __init__(self) -> None:
        self.prefetch: int | None = None
        self.declared: list[tuple[str, bool, dict[str, Any]]] = []

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count

    async def get_underlay_channel(self) -> "FakeChannel":
        return self

    async def declare_queue(
        self, name: str, durable: bool, arguments: dict[str, Any]
    ) -> str:
        self.declared.append((name, durable, arguments))
        return name


class FakeConnection:
    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []

    async def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel())
        return self.channels[-1]


async def test_a_task_queue_has_its_channel_and_room_for_one_batch_more() -> None:
    broker = AioPikaBroker("amqp://nowhere/", task_queues=[Queue(name="jobs")])
    connection = FakeConnection()

    async def connect() -> FakeConnection:
        return connection

    batches = AmqpBatches(broker, _ack, connect)
    settings = BatchSettings(batch_size=50, batch_timeout=1.0, concurrency=2)
    batches.configure(
        [BatchSpec("collect", settings, analyse("collect", collect), None)]
    )
    consumed: list[tuple[Any, Any, str]] = []

    async def consume(channel: Any, queue: Any, tag: str) -> None:
        consumed.append((channel, queue, tag))

    await batches.start(consume, lambda tags: None)
    [channel] = connection.channels
    # Two running batches, a filling buffer, the next batch in flight.
    assert channel.prefetch == (2 + 1) * 50 + 50
    [(name, durable, arguments)] = channel.declared
    assert name == "jobs.batch.collect"
    assert durable
    assert arguments["x-single-active-consumer"] is True
    assert arguments["x-queue-type"] == "quorum"  # as the broker's queue
    [(on, queue, tag)] = consumed
    assert (on, queue) == (channel, "jobs.batch.collect")
    assert batches.limits == {tag: 200}
    [handover] = batches.handovers.each
    assert handover.task_name == "collect"  # its task (``passed_on``)
