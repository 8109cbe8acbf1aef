"""The taker's read-ahead (``worker/taking.py``, ``core/room.py``'s ``ahead``).

While every slot of a task runs, the taker takes one more *full* batch to
wait for a slot, so that the next take overlaps the running batch instead
of following it (a drain's rate); a batch due only by its timeout is left
in the broker for a worker with a free slot (the latency bound).
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskiq_batching import BatchingMiddleware, batch_task
from tests.helpers import QueueBroker, queue_broker, running_worker
from tests.unit.worker.fake_source import FakeSource, use_source
from tests.unit.worker.taking_world import preload, worker_world

pytestmark = pytest.mark.timeout(30)


async def _until(source: FakeSource) -> None:
    """Wait for the source's next take."""
    source.called.clear()
    await source.called.wait()


@dataclass
class Gated:
    """A batched task whose calls wait for ``gate``; ``batches`` records them."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    batches: list[list[int]] = field(default_factory=list)

    async def run(self, items: list[int]) -> None:
        self.batches.append(items)
        self.started.set()
        await self.gate.wait()


async def _sent_and_running(
    monkeypatch: pytest.MonkeyPatch, count: int, size: int, timeout: float
) -> tuple[FakeSource, Any, Gated, list[Any]]:
    """``count`` items waiting in a fake source for a gated task."""
    source, broker, _ = worker_world(monkeypatch)
    gated = Gated()

    @batch_task(broker, batch_size=size, batch_timeout=timeout)
    async def slow(items: list[int]) -> None:
        await gated.run(items)

    sent = [await slow.kiq(i) for i in range(count)]
    await preload(broker, source, slow.task_name)
    return source, broker, gated, sent


async def test_one_full_batch_is_taken_ahead_while_the_slot_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, gated, sent = await _sent_and_running(monkeypatch, 8, 2, 3600)
    async with running_worker(broker):
        await gated.started.wait()
        while source.left() > 4:
            await _until(source)
        # One batch runs, one waits for its slot: no third one is taken.
        assert source.ahead_takes == 1
        assert source.left() == 4
        gated.gate.set()
        await sent[-1].wait_result(timeout=5)
    assert gated.batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(room == 1 for _, room in source.takes)
    assert sorted(source.acked) == sorted(s.task_id for s in sent)


async def test_a_batch_due_by_its_timeout_is_not_taken_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, gated, sent = await _sent_and_running(monkeypatch, 13, 10, 0.001)
    async with running_worker(broker):
        await gated.started.wait()
        while source.ahead_takes < 1:
            await _until(source)
        # The three left are due, not full: a worker with a free slot takes them.
        assert source.left() == 3
        gated.gate.set()
        await sent[-1].wait_result(timeout=5)
    assert gated.batches == [list(range(10)), [10, 11, 12]]


async def test_a_batch_taken_ahead_leaves_a_process_slot_to_other_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``max_concurrent_batches=2`` and one slot running, a batch taken
    ahead would fill the other (every task's room counts what waits): no
    read-ahead then, and another task's batch runs beside."""
    source = FakeSource()
    use_source(monkeypatch, source, None)
    broker = QueueBroker().with_middlewares(
        BatchingMiddleware(max_concurrent_batches=2)
    )
    broker.with_result_backend(queue_broker().result_backend)
    gated = Gated()

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def first(items: list[int]) -> None:
        await gated.run(items)

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def second(items: list[int]) -> int:
        return sum(items)

    for item in range(8):
        await first.kiq(item)
    await preload(broker, source, first.task_name)
    other = [await second.kiq(item) for item in range(2)]
    await preload(broker, source, second.task_name)
    async with running_worker(broker):
        try:
            await gated.started.wait()
            result = await other[-1].wait_result(timeout=5)  # while `first` runs
            assert result.return_value == 1
            assert source.ahead_takes == 0
        finally:
            gated.gate.set()


async def test_a_read_ahead_that_found_nothing_waits_for_a_batch_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rounds go on every ``poll_seconds`` while another task's messages
    wait: the running task's read-ahead is tried once per batch ended, not
    once per round."""
    source, broker, _ = worker_world(monkeypatch)
    gated = Gated()

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def first(items: list[int]) -> None:
        await gated.run(items)

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def second(items: list[int]) -> None:
        pass

    for item in range(3):  # one batch, and one message short of another
        await first.kiq(item)
    await preload(broker, source, first.task_name)
    await second.kiq(0)  # not due for an hour: rounds poll for it
    await preload(broker, source, second.task_name)
    async with running_worker(broker):
        try:
            await gated.started.wait()
            while sum(name == second.task_name for name, _ in source.takes) < 6:
                await _until(source)
            assert source.ahead_takes == 1
        finally:
            gated.gate.set()
