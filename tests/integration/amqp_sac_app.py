"""The app the RabbitMQ fleet tests run in real ``taskiq worker`` processes.

taskiq-aio-pika's ``AioPikaBroker`` on ``RABBITMQ_URL`` (prefetch 100),
results and a record of every batch in ``REDIS_URL``. ``TB_QUEUE`` names
the exchange, the queue and the Redis keys. ``TB_WAIT_IN_BROKER`` set:
``BatchingMiddleware(wait_in_broker=True)`` (a single-active-consumer
queue per batched task). The batched task ``collect`` takes
``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT``; each batch pushes
``{"items": [...], "pid": ..., "at": <start, epoch s>}`` to
``{queue}:started`` when it starts,
runs ``TB_BATCH_DELAY`` seconds, then pushes the same record to
``{queue}:batches``.
"""

import asyncio
import json
import os
import time

from redis.asyncio import Redis

from tests.integration.app_brokers import RABBITMQ_URL, REDIS_URL, amqp_broker

QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-amqp-sac")
DELAY = float(os.environ.get("TB_BATCH_DELAY", "0"))
broker = amqp_broker(RABBITMQ_URL, REDIS_URL, QUEUE, 100)
_log = Redis.from_url(REDIS_URL)


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
    batch_timeout=float(os.environ.get("TB_BATCH_TIMEOUT", "1")),
)
async def collect(items: list[int]) -> list[int]:
    """Record the batch's start, run ``TB_BATCH_DELAY`` s, record its end."""
    record = json.dumps({"items": items, "pid": os.getpid(), "at": time.time()})
    await _log.rpush(f"{QUEUE}:started", record)
    await asyncio.sleep(DELAY)
    await _log.rpush(f"{QUEUE}:batches", record)
    return items
