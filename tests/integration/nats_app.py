"""The app a real ``taskiq worker`` process runs in the NATS tests.

taskiq-nats's ``PullBasedJetStreamBroker`` on the real NATS server
(``NATS_URL``), results and a record of every batch in the real Redis
(``REDIS_URL``). ``TB_QUEUE`` names the stream, its subject
(``<queue>.tasks``), the durable consumer and the Redis keys;
``TB_ACK_WAIT`` is the consumer's ``ack_wait`` in seconds;
``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT`` configure the batched task
``collect``, which appends ``{"items": [...]}`` to ``{queue}:batches``.
"""

import json
import os
from typing import Any

from nats.js.api import ConsumerConfig
from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import BatchingMiddleware


def make_broker(
    nats_url: str, redis_url: str, queue: str, ack_wait: float
) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    broker = PullBasedJetStreamBroker(
        nats_url,
        subject=f"{queue}.tasks",
        stream_name=queue,
        durable=queue,
        consumer_config=ConsumerConfig(durable_name=queue, ack_wait=ack_wait),
    )
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url, prefix_str=queue, result_ex_time=600
    )
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-nats-it")
broker = make_broker(
    NATS_URL, REDIS_URL, QUEUE, float(os.environ.get("TB_ACK_WAIT", "30"))
)
_log = Redis.from_url(REDIS_URL)


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
    batch_timeout=float(os.environ.get("TB_BATCH_TIMEOUT", "1")),
)
async def collect(items: list[int]) -> list[int]:
    """Record the batch in Redis and return its items."""
    await _log.rpush(f"{QUEUE}:batches", json.dumps({"items": items}))
    return items
