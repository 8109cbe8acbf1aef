"""The app a real ``taskiq worker`` runs in the hostile-input tests and the fuzzer.

Configured by environment variables: ``TB_BROKER`` (``stream``: taskiq-redis's
``RedisStreamBroker``; ``rabbit``: taskiq-aio-pika's ``AioPikaBroker``),
``REDIS_URL``, ``RABBITMQ_URL``, ``TB_QUEUE``. Results go to the real Redis.

Every worker process that starts pushes its pid to ``{queue}:pids``: a
process that crashed and was restarted by taskiq shows as a second pid.
"""

import os
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, PerItem, per_item
from tests.hostile_vectors import Item, key, where


def make_broker(
    kind: str, redis_url: str, rabbitmq_url: str, queue: str
) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    broker: AsyncBroker
    if kind == "stream":
        broker = RedisStreamBroker(redis_url, queue_name=queue, xread_block=500)
    else:
        broker = AioPikaBroker(
            url=rabbitmq_url,
            qos=200,
            exchange=Exchange(name=queue),
            task_queues=[Queue(name=queue)],
            dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
        )
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url, prefix_str=queue, result_ex_time=600
    )
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-hostile")
broker = make_broker(
    os.environ.get("TB_BROKER", "stream"),
    REDIS_URL,
    os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    QUEUE,
)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def started(state: TaskiqState) -> None:
    """Record this worker process's pid."""
    async with Redis.from_url(REDIS_URL) as redis:
        await redis.rpush(f"{QUEUE}:pids", os.getpid())


@broker.task(
    task_name="hostile",
    batch=True,
    batch_size=20,
    batch_timeout=0.2,
    batch_where=where,
    batch_key=key,
    batch_cost=lambda item: item.cost,
    batch_max_cost=1e9,
)
async def hostile(
    items: list[Item], tenant: str = "a", note: Any = None
) -> PerItem[list[Any]]:
    """Each item's tenant and ``n``."""
    return per_item([tenant, item.n] for item in items)


@broker.task(task_name="plain")
async def plain(value: int) -> int:
    """A plain task on the same queue."""
    return value
