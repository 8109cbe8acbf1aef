"""RabbitMQ, ``wait_in_broker=True``: a task's queue holds a few batches, the rest
waits on the main queue (``taskiq_batching/transports/amqp_overflow.py``).

Workers are real ``taskiq worker`` processes running
tests/integration/amqp_sac_app.py on the real RabbitMQ; the producer is
the plugin's, built here.
"""

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis

from taskiq_batching._compat import amqp_queue_settings
from taskiq_batching.transports.amqp_queues import (
    BACKLOG_BATCHES,
    SINGLE_ACTIVE_CONSUMER,
    batch_queue_name,
)
from tests.integration.app_brokers import amqp_broker
from tests.integration.stream_batches import declare
from tests.integration.test_amqp_sac import (
    extra_queues,
    ready,
    runs,
    start_worker,
    wait_for_consumers,
)
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

#: test_amqp_sac's fixtures: its queue to delete, its workers.
__all__ = ["extra_queues", "start_worker"]
#: The producer's and the workers' batch_size.
BATCH_SIZE = 100
#: The text of the warning about a queue declared otherwise.
DECLARED_OTHERWISE = "exists with other arguments"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-ovf"


@pytest.fixture
async def broker(
    rabbitmq_url: str, redis_url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """The plugin's producer, ``wait_in_broker=True`` (not started)."""
    monkeypatch.setenv("TB_WAIT_IN_BROKER", "1")
    made = amqp_broker(rabbitmq_url, redis_url, queue, 100)
    yield made
    await made.shutdown()


async def declare_unbounded(
    channel: AbstractChannel, rabbitmq_url: str, redis_url: str, queue: str
) -> str:
    """Declare ``collect``'s queue as an earlier version did: unbounded.

    :return: its name.
    """
    name = batch_queue_name(queue, "collect")
    settings = amqp_queue_settings(amqp_broker(rabbitmq_url, redis_url, queue, 100))
    arguments = {**settings["arguments"], SINGLE_ACTIVE_CONSUMER: True}
    await channel.declare_queue(name, durable=True, arguments=arguments)
    return name


async def all_ran(redis: Redis, queue: str, count: int) -> None:
    async def done() -> bool:
        return sum((await runs(redis, queue)).values()) >= count

    await eventually(done, 60, f"{count} items ran")


async def test_past_its_bound_the_backlog_waits_on_the_main_queue(
    broker: Any,
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Callable[..., Worker],
) -> None:
    """No worker yet: ``BACKLOG_BATCHES`` batches wait in the task's queue,
    the rest on the main queue; a worker then runs every item once."""
    collect = declare(broker, BATCH_SIZE, 1.0)
    await broker.startup()
    bound = BACKLOG_BATCHES * BATCH_SIZE
    count = bound + 150
    await collect.kiq_many(range(count))
    in_task_queue = await ready(channel, batch_queue_name(queue, "collect"))
    on_main_queue = await ready(channel, queue)
    assert in_task_queue + on_main_queue == count
    # RabbitMQ counts the bound roughly (a quorum queue's ready messages).
    assert bound - BATCH_SIZE <= in_task_queue <= bound + BATCH_SIZE
    worker = start_worker(batch_size=BATCH_SIZE, batch_timeout=0.3)
    await all_ran(redis, queue, count)
    worker.stop(timeout=20)
    assert await runs(redis, queue) == Counter(range(count))
    assert DECLARED_OTHERWISE not in worker.output()


async def test_a_queue_an_earlier_version_declared_is_used_as_it_is(
    rabbitmq_url: str,
    redis_url: str,
    broker: Any,
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Callable[..., Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Declared unbounded (as before this change): the producer and the
    worker each warn once, the producer's write channel goes on, and it
    all waits in that queue as it is."""
    name = await declare_unbounded(channel, rabbitmq_url, redis_url, queue)
    collect = declare(broker, BATCH_SIZE, 1.0)
    await broker.startup()
    count = BACKLOG_BATCHES * BATCH_SIZE + 50
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        await collect.kiq_many(range(count // 2))
        await collect.kiq_many(range(count // 2, count))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    assert name in warned[0]
    assert DECLARED_OTHERWISE in warned[0]
    assert await ready(channel, name) == count  # unbounded: nothing overflowed
    assert await ready(channel, queue) == 0
    worker = start_worker(batch_size=BATCH_SIZE, batch_timeout=0.3)
    await wait_for_consumers(channel, queue, 1)
    await all_ran(redis, queue, count)
    worker.stop(timeout=20)
    assert await runs(redis, queue) == Counter(range(count))
    assert worker.output().count(DECLARED_OTHERWISE) == 1, worker.output()
    assert name in worker.output()
