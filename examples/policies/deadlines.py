"""Deadlines: an urgent item makes its batch start early.

Run: ``python -m examples.policies.deadlines``
"""

import asyncio

from taskiq import InMemoryBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task, deadline

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(broker, batch_size=100, batch_timeout=60)
async def notify(users: list[str], batch: BatchInfo = TaskiqDepends()) -> None:
    """Notify a batch of users."""
    print(f"{batch.flush_reason.value}: {users}, within 1 s: {batch.waited < 1}")


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    await notify.kiq("ann")  # would wait up to 60 s...
    urgent = notify.kicker().with_labels(batch_deadline=deadline(0.2))
    bob = await urgent.kiq("bob")  # ...but bob's batch must start within 0.2 s
    await bob.wait_result(timeout=5)
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
