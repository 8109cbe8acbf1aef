"""Keyed batches with a bound: one tenant per batch, at most 2 tenants open.

Run: ``python -m examples.policies.keys``
"""

import asyncio
from typing import Any

from taskiq import InMemoryBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(
    broker,
    batch_size=3,
    batch_timeout=5,
    batch_key="tenant",  # a field of the item (or a function of it)
    batch_max_keys=2,  # a third open tenant flushes the oldest
)
async def save(rows: list[dict[str, Any]], batch: BatchInfo = TaskiqDepends()) -> None:
    """Save a batch of one tenant's rows."""
    tenants = sorted({row["tenant"] for row in rows})
    print(f"{batch.flush_reason.value}: {len(rows)} row(s) of {tenants}")


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    for n, tenant in enumerate("aabbc"):
        await save.kiq({"tenant": tenant, "n": n})
    await broker.shutdown()  # flushes what is left


if __name__ == "__main__":
    asyncio.run(main())
