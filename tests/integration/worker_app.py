"""The app a real ``taskiq worker`` process runs in the integration tests.

Configured by environment variables, so one module serves every case:
``REDIS_URL``, ``TB_BROKER`` (list or stream), ``TB_QUEUE``,
``TB_SERIALIZER`` (json or msgpack), ``TB_BATCH_SIZE``, ``TB_BATCH_TIMEOUT``,
``TB_XREAD_BLOCK_MS``, ``TB_IDLE_MS`` (stream idle_timeout), ``TB_BATCH_DELAY``
(seconds each batch takes).
"""

import asyncio
import json
import os
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, TaskiqDepends
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchInfo, BatchingMiddleware


def make_broker(
    url: str,
    kind: str,
    queue: str,
    serializer: str,
    xread_block_ms: int = 500,
    idle_timeout_ms: int = 600_000,
) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    chosen = MSGPackSerializer() if serializer == "msgpack" else JSONSerializer()
    broker: AsyncBroker
    if kind == "stream":
        broker = RedisStreamBroker(
            url,
            queue_name=queue,
            xread_block=xread_block_ms,
            idle_timeout=idle_timeout_ms,
        )
    else:
        broker = ListQueueBroker(url, queue_name=queue)
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url,
        serializer=chosen,
        prefix_str=queue,
        result_ex_time=600,
    )
    return (
        broker.with_serializer(chosen)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )


URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-it")
broker = make_broker(
    URL,
    os.environ.get("TB_BROKER", "stream"),
    QUEUE,
    os.environ.get("TB_SERIALIZER", "json"),
    int(os.environ.get("TB_XREAD_BLOCK_MS", "500")),
    int(os.environ.get("TB_IDLE_MS", "600000")),
)
BATCH_DELAY = float(os.environ.get("TB_BATCH_DELAY", "0"))
_log = Redis.from_url(URL)


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
    batch_timeout=float(os.environ.get("TB_BATCH_TIMEOUT", "5")),
)
async def collect(items: list[int], info: BatchInfo = TaskiqDepends()) -> list[int]:
    """Record the batch in Redis and return its items."""
    record = {"size": info.size, "reason": info.flush_reason.value}
    if BATCH_DELAY:
        await asyncio.sleep(BATCH_DELAY)  # a batch that takes time, for fault tests
    async with _log.pipeline(transaction=True) as pipe:
        pipe.rpush(f"{QUEUE}:batches", json.dumps(record))
        pipe.sadd(f"{QUEUE}:items", *items)
        pipe.incrby(f"{QUEUE}:processed", len(items))
        await pipe.execute()
    return items


@broker.task(task_name="echo")
async def echo(value: int) -> int:
    """A plain task on the same queue as the batched one."""
    return value


@broker.task(
    task_name="policed",
    batch=True,
    batch_size=4,
    batch_timeout=30,
    batch_key=lambda item: item % 2,
    batch_max_keys=2,
    batch_cost=lambda item: 5 if item == 100 else 1,
    batch_max_cost=4,
    batch_where=lambda item: item >= 0,
)
async def policed(items: list[int], info: BatchInfo = TaskiqDepends()) -> list[Any]:
    """Batches under every policy a worker process applies."""
    return [info.flush_reason.value, items]
