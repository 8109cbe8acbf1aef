"""Whole batches taken from where they wait in the broker (``worker/taking.py``).

A fake ``BatchSource`` stands for the broker (``fake_source.py``); the
worker is taskiq's own Receiver over an in-process queue broker, whose
batched messages a fake forwarder moves into the source, as a plain
producer's messages are forwarded on Redis.
"""

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import pytest
from taskiq import TaskiqDepends
from taskiq.receiver import Receiver

from taskiq_batching import (
    BatchArgumentError,
    BatchedTask,
    BatchInfo,
    BatchingMiddleware,
    BatchItemError,
    PerItem,
    batch_task,
    per_item,
)
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import Taken
from taskiq_batching.worker import taking
from tests.helpers import QueueBroker, Recorder, queue_broker, running_worker
from tests.unit.worker.fake_source import (
    FakeForwarder,
    FakeSource,
    tenant_key,
    use_source,
)

pytestmark = pytest.mark.timeout(30)


async def preload(broker: QueueBroker, source: FakeSource, task_name: str) -> None:
    """Move what was sent to the main queue into the source (a plugin producer)."""
    while not broker.queue.empty():
        message = broker.queue.get_nowait()
        source.put(task_name, message.message)


def worker_world(
    monkeypatch: pytest.MonkeyPatch,
    source: FakeSource | None = None,
    forward: bool = False,
    forward_error: Exception | None = None,
) -> tuple[FakeSource, QueueBroker, Recorder]:
    """A worker's world: ``source`` (a new one if None) as its transport,
    an in-process queue broker, and a recorder for its batch functions.

    :param forward: batched messages sent to the queue are moved into the
        source, as a plain producer's are forwarded on Redis.
    :param forward_error: what the forwarder raises (``forward`` implied).
    """
    source = FakeSource() if source is None else source
    forwarder = None
    if forward or forward_error is not None:
        forwarder = FakeForwarder(source, forward_error)
    use_source(monkeypatch, source, forwarder)
    return source, queue_broker(), Recorder()


Recorded = BatchedTask[int, [], Coroutine[Any, Any, None]]


def recorded(broker: QueueBroker, seen: Recorder, batch_size: int) -> Recorded:
    """The batched task ``batched`` (timeout an hour): its batches go to ``seen``."""

    async def batched(items: list[int]) -> None:
        seen.record(items)

    return batch_task(broker, batch_size=batch_size, batch_timeout=3600)(batched)


async def preloaded(
    broker: QueueBroker, source: FakeSource, task: Recorded, count: int
) -> None:
    """``count`` items sent as a plugin producer sends them: waiting in ``source``."""
    for item in range(count):
        await task.kiq(item)
    await preload(broker, source, task.task_name)


async def test_a_taken_batch_runs_once_with_each_message_s_own_result_and_ack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, seen = worker_world(monkeypatch, forward=True)

    @batch_task(broker, batch_size=3, batch_timeout=3600)
    async def double(
        items: list[int], info: BatchInfo = TaskiqDepends()
    ) -> PerItem[int]:
        seen.record(items, info)
        return per_item(2 * item for item in items)

    async with running_worker(broker):
        sent = [await double.kiq(i) for i in (1, 2, 3)]
        results = [await task.wait_result(timeout=5) for task in sent]
    assert seen.batches == [[1, 2, 3]]
    assert seen.reasons == ["size"]
    assert [result.return_value for result in results] == [2, 4, 6]
    assert sorted(source.acked) == sorted(task.task_id for task in sent)
    stats = BatchingMiddleware.of(broker).statistics()[double.task_name]
    assert stats.flushes == {"size": 1}
    assert stats.batches == 1


async def test_a_batch_due_by_its_timeout_is_recorded_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _source, broker, seen = worker_world(monkeypatch, forward=True)

    @batch_task(broker, batch_size=100, batch_timeout=0.05)
    async def batched(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)

    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(4)]
        await sent[-1].wait_result(timeout=5)
    assert sorted(item for batch in seen.batches for item in batch) == [0, 1, 2, 3]
    assert set(seen.reasons) == {"timeout"}
    stats = BatchingMiddleware.of(broker).statistics()[batched.task_name]
    assert set(stats.flushes) == {"timeout"}


async def test_an_invalid_message_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    source, broker, seen = worker_world(monkeypatch, forward=True)

    batched = recorded(broker, seen, 3)

    # As a plugin producer sends them: the bad one waits with the good ones.
    good = [await batched.kiq(1), await batched.kiq(3)]
    bad = await batched.kiq("not a number")  # type: ignore[call-overload]
    await preload(broker, source, batched.task_name)
    async with running_worker(broker):
        failed = await bad.wait_result(timeout=5)
        # Its batch-mates wait for what they lack, as when read: the next
        # take asks for one message (docs/fleet.md).
        good.append(await batched.kiq(4))
        for task in good:
            assert not (await task.wait_result(timeout=5)).is_err
    assert seen.batches == [[1, 3, 4]]
    assert failed.is_err
    assert isinstance(failed.error, BatchItemError)
    assert sorted(source.acked) == sorted(t.task_id for t in [*good, bad])
    assert ("tests.unit.worker.test_taking:batched", 1) in source.needs


async def test_a_message_read_that_would_fail_is_not_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = FakeSource()
    forwarder = FakeForwarder(source)
    use_source(monkeypatch, source, forwarder)
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def batched(items: list[int], tenant: str = "a") -> None:
        seen.record(items)

    async with running_worker(broker):
        bad = await batched.kiq(1, junk=1)  # type: ignore[call-overload]
        failed = await bad.wait_result(timeout=5)
        good = [await batched.kiq(2), await batched.kiq(3)]
        for task in good:
            assert not (await task.wait_result(timeout=5)).is_err
    # Alone under its own key it would have waited for batch-mates: it
    # failed where it was read, at once.
    assert isinstance(failed.error, BatchArgumentError)
    assert forwarder.forwarded == 2
    assert seen.batches == [[2, 3]]


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
        # Both slots are busy: the taker waits for a change, asking nothing.
        takes = len(source.takes)
        await asyncio.sleep(0.05)
        assert len(source.takes) == takes
        assert source.left() == 6
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
        self, spec: BatchSpec, room: int, needs: Mapping[str, int] | None = None
    ) -> Taken:
        taken = await super().take(spec, room, needs)
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
    monkeypatch.setattr(taking, "IDLE_SECONDS", 10.0)
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
        assert await asyncio.wait_for(entered.get(), taking.IDLE_SECONDS / 4) == 1
        await sent[-1].wait_result(timeout=5)


async def test_a_stop_ends_taking_and_the_take_in_flight_still_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, seen = worker_world(monkeypatch)

    batched = recorded(broker, seen, 2)

    stopping = asyncio.Event()

    class Watched(taking.Taker):
        async def stop(self, deadline: float | None) -> None:
            stopping.set()  # seen once ``stop`` has asked the loop to end
            await super().stop(deadline)

    monkeypatch.setattr("taskiq_batching.worker.pump.Taker", Watched)
    await preloaded(broker, source, batched, 6)
    source.hold_takes = asyncio.Event()
    source.reply_seconds = 0.05  # the reply is on its way when the stop comes
    receiver = Receiver(broker)
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await source.take_started.wait()
    finish.set()  # SIGTERM while the take is in flight
    await stopping.wait()
    source.hold_takes.set()
    await asyncio.wait_for(listening, 10)
    await broker.shutdown()
    assert len(source.takes) == 1
    assert seen.batches == [[0, 1]]
    assert len(source.acked) == 2
    assert source.left() == 4  # still in the broker: nothing lost


async def test_broker_errors_are_retried_after_growing_pauses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(taking, "BACKOFF_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(taking, "BACKOFF_MAX_SECONDS", 0.04)
    source, broker, _ = worker_world(
        monkeypatch,
        FakeSource(error=ConnectionError("connection refused")),
        forward=True,
    )

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def batched(items: list[int]) -> None: ...

    @broker.task
    async def plain() -> int:
        return 7

    caplog.set_level(logging.ERROR, "taskiq_batching")
    async with running_worker(broker):
        while len(source.take_times) < 6:
            source.called.clear()
            await source.called.wait()
        # The worker goes on serving plain tasks meanwhile.
        assert (await (await plain.kiq()).wait_result(timeout=5)).return_value == 7
    times = source.take_times[:6]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, pause in zip(gaps, [0.01, 0.02, 0.04, 0.04, 0.04], strict=True):
        assert gap >= pause * 0.9
    assert "connection refused" in caplog.text
    assert "trying again in" in caplog.text


async def test_plain_messages_reach_the_receiver_while_batches_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, broker, seen = worker_world(monkeypatch, forward=True)

    batched = recorded(broker, seen, 100)

    @broker.task
    async def plain(x: int) -> int:
        return x + 1

    async with running_worker(broker):
        await batched.kiq(1)
        while source.left() == 0:  # forwarded: it waits in the broker
            source.called.clear()
            await source.called.wait()
        results = [await (await plain.kiq(i)).wait_result(timeout=5) for i in range(3)]
        assert [result.return_value for result in results] == [1, 2, 3]
        assert seen.batches == []
    assert source.left() == 1  # not due: it stays in the broker at the stop


async def test_an_idle_worker_blocks_in_idle_instead_of_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(taking, "IDLE_SECONDS", 0.02)
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


async def test_a_failed_forward_leaves_the_messages_to_this_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _source, broker, seen = worker_world(
        monkeypatch, forward_error=ConnectionError("down")
    )

    batched = recorded(broker, seen, 3)

    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(3)]
        await sent[-1].wait_result(timeout=5)
    assert seen.batches == [[0, 1, 2]]
    assert sorted(broker.acked) == sorted(task.task_id for task in sent)
    assert "cannot forward 1 message(s)" in caplog.text  # one per read here


async def test_wait_in_broker_false_asks_the_registry_for_today_s_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = FakeSource()
    calls = use_source(monkeypatch, source, FakeForwarder(source))
    broker = QueueBroker().with_middlewares(BatchingMiddleware(wait_in_broker=False))
    broker.with_result_backend(queue_broker().result_backend)
    seen = Recorder()

    batched = recorded(broker, seen, 3)

    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(3)]
        await sent[-1].wait_result(timeout=5)
    assert calls == [{"wait_in_broker": False}]
    assert seen.batches == [[0, 1, 2]]
    assert source.takes == []
    assert sorted(broker.acked) == sorted(task.task_id for task in sent)


def test_the_registry_passes_wait_in_broker_to_the_transport_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskiq_batching import transports

    got: list[Any] = []

    class Module:
        @staticmethod
        def transport_for(
            broker: Any, listen: Any = None, wait_in_broker: bool | None = None
        ) -> None:
            got.append(wait_in_broker)

    monkeypatch.setattr(transports, "_modules", lambda table, obj: [(Module, False)])
    transports.transport_for(QueueBroker(), None, wait_in_broker=False)
    transports.transport_for(QueueBroker(), None, wait_in_broker=True)
    transports.transport_for(QueueBroker())
    assert got == [False, True, None]  # None: each module's default (off)
