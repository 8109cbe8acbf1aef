"""A minimum size: the timer waits for 3 items, but never past 0.3 s.

Run: ``python -m examples.policies.min_size``
"""

import asyncio

from taskiq import InMemoryBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(
    broker,
    batch_size=10,
    batch_timeout=0.05,  # seconds after the first item...
    batch_min_size=3,  # ...unless fewer than 3 wait...
    batch_max_wait=0.3,  # ...then at most this many seconds
)
async def send(items: list[int], batch: BatchInfo = TaskiqDepends()) -> None:
    """Send a batch of items."""
    print(
        f"{batch.flush_reason.value}: {items}, waited >= 0.3 s: {batch.waited >= 0.3}"
    )


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    first = await send.kiq(1)
    await send.kiq(2)
    await first.wait_result(timeout=5)  # its batch ran after batch_max_wait
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
