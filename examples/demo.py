"""See batches form: ``python -m examples.demo [REDIS_URL]``.

Without an argument everything runs on ``InMemoryBroker``. With a Redis
URL, the producer sends to a Redis stream and a worker (taskiq's own
Receiver, in this process) consumes it, exactly as ``taskiq worker``
would.
"""

import asyncio
import sys
import uuid
from collections import Counter

from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncTaskiqTask
from taskiq.receiver import Receiver

from examples.app import Row, declare_tasks, make_broker
from taskiq_batching import BatchingMiddleware


async def results(tasks: list[AsyncTaskiqTask[int]]) -> Counter[int]:
    """Wait for every message's result; count them by value."""
    values = [(await task.wait_result(timeout=30)).return_value for task in tasks]
    return Counter(values)


async def run(redis_url: str | None) -> None:
    """Send a burst, then a few rows before shutting down."""
    # A stream of its own, so no earlier run's messages mix in.
    queue = f"taskiq-batching-demo-{uuid.uuid4().hex[:8]}"
    broker: AsyncBroker = make_broker(redis_url, queue)
    insert_rows = declare_tasks(broker)
    await broker.startup()
    finish = asyncio.Event()
    worker = None
    if redis_url is not None:
        receiver = Receiver(broker, run_startup=False, max_async_tasks=100)
        worker = asyncio.create_task(receiver.listen(finish))
    where = redis_url or "InMemoryBroker"
    print(f"Worker on {where}: batch_size=100, batch_timeout=1.0 s")

    print("\n1. A burst of 250 rows: two full batches, then 50 after 1 s.")
    burst = [await insert_rows.kiq(Row(id=i, name=f"row-{i}")) for i in range(250)]
    counts = await results(burst)
    print(f"   results: {dict(counts)} (each message gets its batch's return value)")

    print("\n2. 7 rows, then shutdown: flushed at once, not after 1 s.")
    tail = [await insert_rows.kiq(Row(id=i, name=f"row-{i}")) for i in range(250, 257)]
    await BatchingMiddleware.of(broker).wait_buffered(len(tail))
    if worker is not None and redis_url is not None:
        finish.set()  # what SIGTERM does to `taskiq worker`
        await worker
        counts = await results(tail)
        await broker.shutdown()
        async with Redis.from_url(redis_url) as redis:
            # The demo's stream and what the plugin keeps beside it.
            keys = [key async for key in redis.scan_iter(match=f"{queue}*")]
            await redis.delete(*keys)
    else:
        await broker.shutdown()
        counts = await results(tail)
    print(f"   results: {dict(counts)}")


def main() -> None:
    """Entry point: the optional argument is a Redis URL."""
    asyncio.run(run(sys.argv[1] if len(sys.argv) > 1 else None))


if __name__ == "__main__":
    main()
