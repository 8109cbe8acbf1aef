"""Statistics without a metrics library: ``BatchingMiddleware.of(broker).statistics()``.

Run: ``python -m examples.policies.statistics``
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(broker, task_name="insert", batch_size=10, batch_timeout=0.05)
async def insert(rows: list[int]) -> None:
    """Insert a batch of rows."""


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    for row in range(25):
        await insert.kiq(row)
    await broker.shutdown()
    stats = BatchingMiddleware.of(broker).statistics()["insert"]
    print(f"batches {stats.batches}, items {stats.items}, flushes {stats.flushes}")
    print(f"average size {stats.average_size:.1f}, fill {stats.fill_ratio:.0%}")


if __name__ == "__main__":
    asyncio.run(main())
