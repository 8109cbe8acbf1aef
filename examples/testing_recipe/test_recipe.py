"""Unit tests of a batched task on InMemoryBroker (pytest-asyncio, strict mode)."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task

# Keep every result: InMemoryBroker() keeps only its last 100.
broker = InMemoryBroker(max_stored_results=-1).with_middlewares(BatchingMiddleware())


@batch_task(broker, batch_size=60, batch_timeout=1)
async def total(items: list[int]) -> int:
    """Sum a batch of numbers."""
    return sum(items)


@pytest_asyncio.fixture
async def started() -> AsyncIterator[InMemoryBroker]:
    """The broker, started for one test and shut down after it."""
    await broker.startup()
    yield broker
    await broker.shutdown()  # flushes whatever is still buffered


@pytest.mark.asyncio
async def test_every_item_gets_its_batch_result(started: InMemoryBroker) -> None:
    """400 items: 6 full batches at once, the last 40 after batch_timeout."""
    tasks = [await total.kiq(i) for i in range(400)]
    await started.wait_all()
    sums = [(await task.wait_result(timeout=1)).return_value for task in tasks]
    assert sums[0] == sum(range(60))  # item 0 was in the first batch
    assert sums[-1] == sum(range(360, 400))  # item 399 in the last one


@pytest.mark.asyncio
async def test_flush_without_waiting_for_the_timer(started: InMemoryBroker) -> None:
    """flush() starts a batch from every buffer now."""
    middleware = BatchingMiddleware.of(started)
    tasks = [await total.kiq(i) for i in (1, 2, 3)]
    await middleware.wait_buffered(3)
    assert middleware.flush() == 1  # one buffer, one batch
    for task in tasks:
        assert (await task.wait_result(timeout=1)).return_value == 6
