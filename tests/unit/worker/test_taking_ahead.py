"""The taker's read-ahead (``worker/taking.py``, ``Runner.ahead``).

While every slot of a task runs, the taker takes one more *full* batch to
wait for a slot, so that the next take overlaps the running batch instead
of following it (a drain's rate); a batch due only by its timeout is left
in the broker for a worker with a free slot (the latency bound).
"""

import asyncio

import pytest

from taskiq_batching import batch_task
from tests.helpers import running_worker
from tests.unit.worker.fake_source import FakeSource
from tests.unit.worker.taking_world import preload, worker_world

pytestmark = pytest.mark.timeout(30)


async def _until(source: FakeSource) -> None:
    """Wait for the source's next take."""
    source.called.clear()
    await source.called.wait()


async def test_one_full_batch_is_taken_ahead_while_the_slot_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, _ = worker_world(monkeypatch)
    gate = asyncio.Event()
    started = asyncio.Event()
    batches: list[list[int]] = []

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def slow(items: list[int]) -> None:
        batches.append(items)
        started.set()
        await gate.wait()

    sent = [await slow.kiq(i) for i in range(8)]
    await preload(broker, source, slow.task_name)
    async with running_worker(broker):
        await started.wait()
        while source.left() > 4:
            await _until(source)
        # One batch runs, one waits for its slot: no third one is taken.
        assert source.ahead_takes == 1
        assert source.left() == 4
        gate.set()
        await sent[-1].wait_result(timeout=5)
    assert batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(room == 1 for _, room in source.takes)
    assert sorted(source.acked) == sorted(s.task_id for s in sent)


async def test_a_batch_due_by_its_timeout_is_not_taken_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, _ = worker_world(monkeypatch)
    gate = asyncio.Event()
    started = asyncio.Event()
    batches: list[list[int]] = []

    @batch_task(broker, batch_size=10, batch_timeout=0.001)
    async def slow(items: list[int]) -> None:
        batches.append(items)
        started.set()
        await gate.wait()

    sent = [await slow.kiq(i) for i in range(13)]
    await preload(broker, source, slow.task_name)
    async with running_worker(broker):
        await started.wait()
        while source.ahead_takes < 1:
            await _until(source)
        # The three left are due, not full: a worker with a free slot takes them.
        assert source.left() == 3
        gate.set()
        await sent[-1].wait_result(timeout=5)
    assert batches == [list(range(10)), [10, 11, 12]]
