"""RabbitMQ, ``wait_in_broker=True``: a plain producer's messages are forwarded
only while a worker's own share would not fill its batches
(``taskiq_batching/worker/own_share.py``).

Workers are real ``taskiq worker`` processes running
tests/integration/amqp_sac_app.py on the real RabbitMQ; the producer is a
plain taskiq kicker (its messages land on the main queue).
"""

from collections import Counter
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from tests.integration.app_brokers import amqp_broker
from tests.integration.test_amqp_sac import (
    extra_queues,
    records,
    runs,
    start_worker,
    wait_for_consumers,
)
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

#: test_amqp_sac's fixtures: its queue to delete, its workers.
__all__ = ["extra_queues", "start_worker"]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-share"


async def test_a_worker_reading_a_batch_s_worth_batches_it_where_read(
    rabbitmq_url: str,
    redis_url: str,
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Any,
) -> None:
    """28 items kicked at once to two processes, ``batch_size`` 10, 5 s timeout.

    RabbitMQ deals them round robin, ~14 to each process: each forwards
    the first 9 it reads (fewer than a batch within the timeout) and
    batches the rest itself, so both processes run batches. Forwarding
    them all, the one active consumer of the task's queue would run every
    batch (28 is under its prefetch: it never passes the role on).
    """
    worker = start_worker(("--workers", "2"), batch_size=10, batch_timeout=5)
    plain = amqp_broker(rabbitmq_url, redis_url, queue, 100)
    await plain.startup()
    try:
        await wait_for_consumers(channel, queue, 2)
        kicker: AsyncKicker[Any, Any] = AsyncKicker("collect", plain, {})
        for item in range(28):
            await kicker.kiq(item)

        async def all_ran() -> bool:
            return sum((await runs(redis, queue)).values()) >= 28

        await eventually(all_ran, 60, "every item ran")
    finally:
        await plain.shutdown()
    worker.stop(timeout=20)
    assert await runs(redis, queue) == Counter(range(28))
    assert len({one["pid"] for one in await records(redis, queue)}) == 2
