"""RabbitMQ, ``wait_in_broker=True``: a worker behind passes its task queue's role on.

Real ``taskiq worker`` processes (tests/integration/amqp_sac_app.py) on
the real RabbitMQ and Redis, the fixtures of test_amqp_sac.py.
"""

from collections import Counter
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis

from taskiq_batching.transports.amqp_queues import batch_queue_name
from tests.integration.test_amqp_overflow import declare_unbounded
from tests.integration.test_amqp_sac import (
    StartWorker,
    extra_queues,
    producer,
    queue_prefix,
    ready,
    records,
    runs,
    start_worker,
    wait_for_consumers,
)
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

__all__ = ["extra_queues", "producer", "queue_prefix", "start_worker"]


async def test_two_processes_share_a_backlog_in_full_batches(
    rabbitmq_url: str,
    redis_url: str,
    producer: Any,
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: StartWorker,
) -> None:
    """A backlog of 20 batches of 10, each batch 0.2 s: both processes run some.

    The active consumer soon holds its whole prefetch (30: a running
    batch, a filling buffer, the next batch) and passes the role on; the
    other gets the next messages from RabbitMQ. Before, the single active
    consumer ran every batch while the other idled. Every batch is full
    (a sibling never starts on a partial one), every item runs once.
    """
    # Unbounded: the whole backlog waits in it. Bounded (BACKLOG_BATCHES), the rest
    # would wait on the main queue, where each worker batches what it reads
    # itself, partly (amqp_overflow.py).
    await declare_unbounded(channel, rabbitmq_url, redis_url, queue)
    settings = {"batch_size": 10, "batch_timeout": 0.3, "batch_delay": 0.2}
    workers = [start_worker(**settings) for _ in range(2)]
    await wait_for_consumers(channel, queue, 2)
    count = 200
    await producer.kiq_many(range(count))

    async def all_ran() -> bool:
        return sum((await runs(redis, queue)).values()) >= count

    await eventually(all_ran, 60, "every item ran")
    for worker in workers:
        worker.stop(timeout=20)
    batches = await records(redis, queue)
    assert await runs(redis, queue) == Counter(range(count))
    assert len({one["pid"] for one in batches}) == 2
    assert [len(one["items"]) for one in batches] == [10] * 20
    assert await ready(channel, batch_queue_name(queue, "collect")) == 0
