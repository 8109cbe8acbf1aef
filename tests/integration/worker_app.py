"""The app a real ``taskiq worker`` process runs in the integration tests.

Configured by environment variables, so one module serves every case:
``REDIS_URL``, ``TB_BROKER`` (list or stream), ``TB_QUEUE``,
``TB_SERIALIZER`` (json or msgpack), ``TB_BATCH_SIZE``, ``TB_BATCH_TIMEOUT``,
``TB_XREAD_BLOCK_MS``.
"""

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
) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    chosen = MSGPackSerializer() if serializer == "msgpack" else JSONSerializer()
    broker: AsyncBroker
    if kind == "stream":
        broker = RedisStreamBroker(url, queue_name=queue, xread_block=xread_block_ms)
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
)
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
    await _log.rpush(f"{QUEUE}:batches", json.dumps(record))
    return items
