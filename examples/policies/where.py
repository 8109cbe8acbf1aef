"""A filter: only items worth indexing run; the others finish at once.

Run: ``python -m examples.policies.where``
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(
    broker,
    batch_size=10,
    batch_timeout=0.05,
    batch_where=lambda doc: bool(doc.strip()),  # skip empty documents
)
async def index(docs: list[str]) -> int:
    """Index a batch of non-empty documents."""
    print(f"indexing {docs}")
    return len(docs)


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    sent = [await index.kiq(doc) for doc in ("a", " ", "b", "")]
    for task in sent:
        result = await task.wait_result(timeout=5)
        filtered = result.labels.get("batch_filtered", False)
        print(f"result {result.return_value}, filtered: {filtered}")
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
