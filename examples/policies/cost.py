"""A cost budget: batches of at most 1,000 tokens; a larger item runs alone.

Run: ``python -m examples.policies.cost``
"""

import asyncio

from taskiq import InMemoryBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(
    broker,
    batch_size=100,  # still a hard cap on the count
    batch_timeout=5,
    batch_cost=len,  # an item's cost: here its length
    batch_max_cost=1_000,
)
async def embed(texts: list[str], batch: BatchInfo = TaskiqDepends()) -> None:
    """Embed a batch of texts within the token budget."""
    cost = sum(len(text) for text in texts)
    print(f"{batch.flush_reason.value}: {len(texts)} text(s), {cost} tokens")


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    for size in (400, 400, 400, 1_500, 100):
        await embed.kiq("x" * size)
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
