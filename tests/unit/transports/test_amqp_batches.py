"""The RabbitMQ task queues' names and the transport's prefetch accounting."""

from collections import Counter
from typing import Any

from taskiq_aio_pika import AioPikaBroker, Queue

from taskiq_batching.transports.amqp_batches import (
    MAX_NAME_BYTES,
    AmqpBatches,
    batch_queue_name,
)
from taskiq_batching.transports.base import Delivery


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
