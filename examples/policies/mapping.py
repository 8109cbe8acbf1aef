"""Producer-side mapping: chunks of 10, stop sending at the first failure.

Run: ``python -m examples.policies.mapping``
"""

import asyncio

from taskiq import InMemoryBroker, TaskiqResult

from taskiq_batching import AnyFailed, BatchingMiddleware, NotSent, batch_task, per_item

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(broker, batch_size=10, batch_timeout=1)
async def migrate(ids: list[int]) -> object:
    """Migrate a batch of rows; a corrupt one fails alone."""
    return per_item([ValueError(f"row {i} is corrupt") if i == 13 else i for i in ids])


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    done = await migrate.map(range(100), chunk_size=10, kill_switch=AnyFailed())
    await broker.shutdown()
    failed = [n for n, d in enumerate(done) if isinstance(d, TaskiqResult) and d.is_err]
    unsent = [d for d in done if isinstance(d, NotSent)]
    print(f"sent {len(done) - len(unsent)}, failed {failed}, not sent {len(unsent)}")
    print(f"why: {unsent[0].reason}")


if __name__ == "__main__":
    asyncio.run(main())
