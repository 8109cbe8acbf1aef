"""The taker's room and pacing (``worker/taking.py``): ``batch_max_keys``,
``batch_concurrency``, room freed mid-round, idling without polling, and
``max_tasks_per_child``. The worker's world: ``taking_world.py``.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import pytest
from taskiq.receiver import Receiver

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import Taken
from taskiq_batching.worker import taking_waits
from tests.helpers import memory_broker, running_worker
from tests.unit.worker.fake_source import FakeSource, tenant_key
from tests.unit.worker.taking_world import preload, preloaded, recorded, worker_world

pytestmark = pytest.mark.timeout(30)


async def test_batch_max_keys_bounds_the_keys_running_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, _ = worker_world(monkeypatch, FakeSource(key_of=tenant_key))
    running: set[int] = set()
    peak = 0
    done: list[int] = []
    all_done = asyncio.Event()

    @batch_task(
        broker,
        batch_size=5,
        batch_timeout=3600,
        batch_key=lambda item: item // 5,
        batch_max_keys=2,
        batch_concurrency=8,
    )
    async def per_tenant(items: list[int]) -> None:
        nonlocal peak
        tenant = items[0] // 5
        running.add(tenant)
        peak = max(peak, len(running))
        await asyncio.sleep(0.01)  # the work: others may start meanwhile
        running.discard(tenant)
        done.extend(items)
        if len(done) == 50:
            all_done.set()

    for item in range(50):
        await per_tenant.kiq(item)
    await preload(broker, source, per_tenant.task_name)
    async with running_worker(broker):
        await all_done.wait()
    assert sorted(done) == list(range(50))
    assert peak == 2
    assert max(room for _, room in source.takes) == 2


async def test_batch_concurrency_bounds_the_batches_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, _ = worker_world(monkeypatch)
    gate = asyncio.Event()
    entered = asyncio.Queue[int]()

    @batch_task(broker, batch_size=2, batch_timeout=3600, batch_concurrency=2)
    async def slow(items: list[int]) -> None:
        entered.put_nowait(items[0])
        await gate.wait()

    sent = [await slow.kiq(i) for i in range(10)]
    await preload(broker, source, slow.task_name)
    async with running_worker(broker):
        await entered.get()
        await entered.get()
        # Both slots are busy: one full batch is taken ahead to wait for a
        # slot (the read-ahead), then the taker waits for a change, asking
        # nothing.
        while source.left() > 4:
            source.called.clear()
            await source.called.wait()
        takes = len(source.takes)
        await asyncio.sleep(0.05)
        assert len(source.takes) == takes
        assert source.left() == 4
        assert source.ahead_takes == 1
        gate.set()
        await sent[-1].wait_result(timeout=5)
    assert all(room <= 2 for _, room in source.takes)
    assert len(source.acked) == 10


class EndsABatchMidTake(FakeSource):
    """Runs ``during`` inside the ``nth`` take of ``task_name`` (once)."""

    task_name = ""
    nth = 0
    during: Callable[[], Awaitable[None]] | None = None

    async def take(
        self,
        spec: BatchSpec,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
    ) -> Taken:
        taken = await super().take(spec, room, needs, full_only=full_only)
        counted = sum(1 for name, _ in self.takes if name == self.task_name)
        if spec.task_name == self.task_name and counted == self.nth and self.during:
            await self.during()
        return taken


async def test_room_freed_while_a_round_takes_wakes_the_taker_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch that ends while the taker's round awaits another task's take
    frees room the round must not miss: the next batch is taken at once.
    (The round asked for the next change only after its takes: the batch's
    end was missed, and the taker waited for a send, up to ``IDLE_SECONDS``
    per batch: a worker running one task's batches back to back paused
    2 s each time, seen in test_stream_fleet_churn.)"""
    monkeypatch.setattr(taking_waits, "IDLE_SECONDS", 10.0)
    source, broker, _ = worker_world(monkeypatch, EndsABatchMidTake())
    assert isinstance(source, EndsABatchMidTake)
    gate = asyncio.Event()
    entered = asyncio.Queue[int]()

    @batch_task(broker, batch_size=1, batch_timeout=3600)
    async def busy(items: list[int]) -> None:
        entered.put_nowait(items[0])
        await gate.wait()

    @batch_task(broker, batch_size=1, batch_timeout=3600)
    async def quiet(items: list[int]) -> None: ...

    async def end_busy_batch() -> None:
        gate.set()
        batcher = BatchingMiddleware.of(broker).batcher
        assert batcher is not None
        while batcher.room(busy.task_name) == 0:  # until its end
            await batcher.changed()

    # The second round: busy's first batch runs (no room), quiet is taken.
    source.task_name, source.nth, source.during = quiet.task_name, 2, end_busy_batch
    sent = [await busy.kiq(i) for i in range(2)]
    await preload(broker, source, busy.task_name)
    async with running_worker(broker):
        assert await asyncio.wait_for(entered.get(), 5) == 0
        assert await asyncio.wait_for(entered.get(), taking_waits.IDLE_SECONDS / 4) == 1
        await sent[-1].wait_result(timeout=5)


async def test_an_idle_worker_blocks_in_idle_instead_of_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(taking_waits, "IDLE_SECONDS", 0.02)
    source, broker, _ = worker_world(monkeypatch)

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def one(items: list[int]) -> None: ...

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def two(items: list[int]) -> None: ...

    async with running_worker(broker):
        while source.idles < 5:
            source.called.clear()
            await source.called.wait()
    # One idle watches both tasks; a round takes each task once.
    assert len(source.takes) <= 2 * (source.idles + 1)


async def test_max_tasks_per_child_counts_taken_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, seen = worker_world(monkeypatch)

    batched = recorded(broker, seen, 2)

    await preloaded(broker, source, batched, 10)
    receiver = Receiver(broker, max_tasks_to_execute=4)
    await asyncio.wait_for(receiver.listen(asyncio.Event()), 10)
    await broker.shutdown()
    assert sum(seen.sizes) == 4
    assert source.left() == 6


async def test_open_remainders_of_many_keys_do_not_widen_the_held_bound() -> None:
    """Only the fullest open buffer is left out of ``max_held`` (a take may
    top it up): counting every key's remainder as free let a keyed task
    take a fresh batch per remainder on top of the bound."""
    broker = memory_broker()

    @batch_task(
        broker,
        batch_size=10,
        batch_timeout=3600,
        batch_key=lambda item: item // 100,
        batch_concurrency=4,
    )
    async def per_key(items: list[int]) -> None: ...

    await broker.startup()
    try:
        # Six keys with 8 messages each: 48 held of max_held 50.
        for item in [key * 100 + i for key in range(6) for i in range(8)]:
            await per_key.kiq(item)
        batcher = BatchingMiddleware.of(broker).batcher
        assert batcher is not None
        await batcher.wait_buffered(48)
        settings = batcher.specs[per_key.task_name].settings
        assert settings.max_held == 50
        # Room for one batch: (50 - 48 + 8) // 10. Every remainder counted
        # as free gave 4, the batch_concurrency, 88 held after the take.
        assert batcher.room(per_key.task_name) == 1
    finally:
        await broker.shutdown()
