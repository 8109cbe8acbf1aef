"""Concurrent batches: up to 4 batches at once, one at a time per account.

Run: ``python -m examples.policies.concurrency``
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())
running: dict[str, int] = {}
most = {"all": 0, "per account": 0}


@batch_task(
    broker,
    batch_size=2,
    batch_timeout=0.05,
    batch_concurrency=4,  # batches of this task at once, per worker process
    batch_key=lambda item: item.split(":")[0],
    batch_key_concurrency=1,  # never two batches of one account at once
)
async def charge(items: list[str]) -> None:
    """Charge one account for a batch of its items."""
    account = items[0].split(":")[0]
    running[account] = running.get(account, 0) + 1
    most["all"] = max(most["all"], sum(running.values()))
    most["per account"] = max(most["per account"], running[account])
    await asyncio.sleep(0.05)  # the call to the payment API
    running[account] -= 1


async def main() -> None:
    """Send the items, then shut down (buffers flush)."""
    await broker.startup()
    for n in range(8):
        for account in "abcd":
            await charge.kiq(f"{account}:{n}")
    await broker.shutdown()
    print(f"most batches at once: {most['all']}, per account: {most['per account']}")


if __name__ == "__main__":
    asyncio.run(main())
