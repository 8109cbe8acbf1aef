"""A batched task as an app would declare it.

``taskiq worker examples.app:broker`` runs it against ``REDIS_URL``
(the docker-compose worker does); without ``REDIS_URL`` the broker is an
``InMemoryBroker``.
"""

import os
import time
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel
from taskiq import AsyncBroker, InMemoryBroker, TaskiqDepends
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchedTask, BatchInfo, BatchingMiddleware, batch_task


class Row(BaseModel):
    """One row to insert."""

    id: int
    name: str


def make_broker(
    redis_url: str | None,
    queue: str = "taskiq-batching-demo",
) -> AsyncBroker:
    """A Redis stream broker with results, or an in-memory one for tests."""
    if redis_url is None:
        return InMemoryBroker(max_stored_results=-1).with_middlewares(
            BatchingMiddleware(),
        )
    backend: RedisAsyncResultBackend[int] = RedisAsyncResultBackend(
        redis_url,
        result_ex_time=600,
    )
    return (
        RedisStreamBroker(redis_url, queue_name=queue)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )


def declare_tasks(
    broker: AsyncBroker,
) -> BatchedTask[Row, [], Coroutine[Any, Any, int]]:
    """Declare the demo's batched task on a broker."""

    @batch_task(broker, batch_size=100, batch_timeout=1.0, task_name="insert_rows")
    async def insert_rows(rows: list[Row], batch: BatchInfo = TaskiqDepends()) -> int:
        """Insert the rows in one go (here: print the batch) and count them."""
        first, last = rows[0].id, rows[-1].id
        print(
            f"{time.strftime('%H:%M:%S')} batch of {batch.size:3d} rows "
            f"(#{first}..#{last}), flushed by {batch.flush_reason.value} "
            f"after {batch.waited:.2f} s",
            flush=True,
        )
        return len(rows)

    return insert_rows


broker = make_broker(os.environ.get("REDIS_URL"))
insert_rows = declare_tasks(broker)
