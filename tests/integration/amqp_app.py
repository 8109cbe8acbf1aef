"""The app a real ``taskiq worker`` process runs in the AMQP transport's tests.

taskiq-aio-pika's ``AioPikaBroker`` as shipped (so the worker reads it
through the AMQP transport; ``rabbit_app.py`` overrides ``listen`` and so
gets the generic one) on the real RabbitMQ (``RABBITMQ_URL``), results and
a record of every batch in the real Redis (``REDIS_URL``). ``TB_QUEUE``
names the exchange, the queue, the dead-letter queue and the Redis keys;
``TB_QOS`` is the prefetch; ``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT``
configure the batched task ``collect``, which appends ``{"items": [...]}``
to ``{queue}:batches``.
"""

import json
import os
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import BatchingMiddleware


def make_broker(rabbitmq_url: str, redis_url: str, queue: str, qos: int) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=qos,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url, prefix_str=queue, result_ex_time=600
    )
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-amqp-it")
broker = make_broker(
    RABBITMQ_URL, REDIS_URL, QUEUE, int(os.environ.get("TB_QOS", "200"))
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
