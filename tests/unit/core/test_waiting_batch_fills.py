"""A flushed batch waiting for a run slot keeps taking its key's messages."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from taskiq import InMemoryBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.core.batcher import Batcher
from tests.helpers import Recorder

pytestmark = pytest.mark.timeout(30)


async def _until(batcher: Batcher, condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, re-checked at each change and each flush timer."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10
    while not condition():
        assert loop.time() < give_up, "condition not met in 10 s"
        # A timer's flush tells no one: look again soon after it.
        await asyncio.wait({batcher.changed()}, timeout=0.01)


def _broker(limit: int = 1) -> tuple[InMemoryBroker, Batcher]:
    broker = InMemoryBroker(max_stored_results=-1).with_middlewares(
        BatchingMiddleware(max_concurrent_batches=limit)
    )
    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    return broker, batcher


async def _backlog(
    broker: InMemoryBroker,
    batcher: Batcher,
    started: asyncio.Event,
    name: str,
    send: Callable[[int], Awaitable[object]],
    count: int,
) -> None:
    """Block the one slot with a running batch, then send ``count`` items.

    Each item is sent only once the one before is out of the open buffers
    (flushed on its timeout, or in a waiting batch): without filling, each
    would be a batch of its own.
    """
    await broker.startup()
    await send(-1)
    await asyncio.wait_for(started.wait(), 10)
    for number in range(count):
        await send(number)
        held = number + 2
        await _until(
            batcher,
            lambda: batcher.held[name] == held and batcher.buffered(name) == 0,  # noqa: B023
        )


async def test_a_batch_waiting_for_a_slot_fills_up_to_batch_size() -> None:
    broker, batcher = _broker()
    seen = Recorder()
    started, release = asyncio.Event(), asyncio.Event()

    @batch_task(broker, batch_size=10, batch_timeout=0.01)
    async def slow(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)
        started.set()
        await release.wait()

    await _backlog(broker, batcher, started, slow.task_name, slow.kiq, 12)
    release.set()
    await broker.wait_all()
    # The batch flushed on its timeout waited for the slot and took every
    # message of its key that came meanwhile, up to batch_size.
    assert seen.batches == [[-1], list(range(10)), [10, 11]]
    assert seen.reasons == ["timeout", "timeout", "timeout"]
    await broker.shutdown()


async def test_a_waiting_batch_fills_within_its_cost_bound() -> None:
    broker, batcher = _broker()
    seen = Recorder()
    started, release = asyncio.Event(), asyncio.Event()

    @batch_task(
        broker,
        batch_size=10,
        batch_timeout=0.01,
        batch_cost=lambda item: 1 + (item == 3),
        batch_max_cost=4,
    )
    async def slow(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)
        started.set()
        await release.wait()

    await _backlog(broker, batcher, started, slow.task_name, slow.kiq, 6)
    release.set()
    await broker.wait_all()
    # 0, 1, 2 cost 3; 3 (cost 2) would take the waiting batch over 4: it
    # opens the next one, which 4 and 5 join (cost 4, the bound, reached).
    assert seen.batches[1:] == [[0, 1, 2], [3, 4, 5]]
    await broker.shutdown()


async def test_separate_keys_fill_their_own_waiting_batches() -> None:
    broker, batcher = _broker()
    seen = Recorder()
    started, release = asyncio.Event(), asyncio.Event()

    @batch_task(
        broker,
        batch_size=10,
        batch_timeout=0.01,
        batch_key=lambda item: item % 2,
        batch_concurrency=5,  # a keyed task takes no more than this backlog
    )
    async def slow(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)
        started.set()
        await release.wait()

    await _backlog(broker, batcher, started, slow.task_name, slow.kiq, 4)
    release.set()
    await broker.wait_all()
    assert sorted(seen.batches[1:]) == [[0, 2], [1, 3]]
    await broker.shutdown()
