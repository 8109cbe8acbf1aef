"""Whole batches taken from where they wait in the broker (``worker/taking.py``):
each message's result and ack, invalid and plain messages, forwarding, and
the switch (``wait_in_broker``). Room and pacing: ``test_taking_room.py``;
stops and broker errors: ``test_taking_stops.py``. The worker's world:
``taking_world.py``.
"""

from typing import Any

import pytest
from taskiq import TaskiqDepends

from taskiq_batching import (
    BatchArgumentError,
    BatchInfo,
    BatchingMiddleware,
    BatchItemError,
    PerItem,
    batch_task,
    per_item,
)
from taskiq_batching.transports.batch_source import ForwardingPaused
from tests.helpers import QueueBroker, Recorder, queue_broker, running_worker
from tests.unit.worker.fake_source import (
    FakeForwarder,
    FakeSource,
    FillingForwarder,
    use_source,
)
from tests.unit.worker.taking_world import (
    forwarding_world,
    preload,
    recorded,
    worker_world,
)

pytestmark = pytest.mark.timeout(30)


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
    assert (batched.task_name, 1) in source.needs


async def test_a_message_read_that_would_fail_is_not_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _source, forwarder, broker, seen = forwarding_world(monkeypatch)

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


@pytest.mark.parametrize("to_fill", [True, False], ids=["to-fill", "always"])
async def test_a_worker_whose_reads_fill_a_batch_batches_them_where_read(
    monkeypatch: pytest.MonkeyPatch, to_fill: bool
) -> None:
    make = FillingForwarder if to_fill else FakeForwarder
    source, forwarder, broker, seen = forwarding_world(monkeypatch, make)
    batched = recorded(broker, seen, 3)

    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(5)]
        if to_fill:
            # The third read within the hour fills a batch here: it and
            # the next two run where read; the first two were forwarded.
            for task in sent[2:]:
                assert not (await task.wait_result(timeout=5)).is_err
        else:
            await sent[2].wait_result(timeout=5)
    if to_fill:
        assert forwarder.forwarded == 2
        assert seen.batches == [[2, 3, 4]]
        assert source.left() == 2  # not due: they stay in the broker
    else:
        assert forwarder.forwarded == 5
        assert seen.batches == [[0, 1, 2]]


async def test_a_keyed_task_is_forwarded_however_many_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _source, forwarder, broker, seen = forwarding_world(monkeypatch, FillingForwarder)

    # Its keys split this worker's share: gathering them fills batches.
    @batch_task(broker, batch_size=3, batch_timeout=3600, batch_key=lambda i: i % 2)
    async def keyed(items: list[int]) -> None:
        seen.record(items)

    async with running_worker(broker):
        sent = [await keyed.kiq(i) for i in range(6)]
        await sent[-1].wait_result(timeout=5)
    assert forwarder.forwarded == 6


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


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (ConnectionError("down"), True),  # one error per read here
        # A forwarder holding off after a failure it logged once: each
        # forward it refuses is parked without an error of its own.
        (ForwardingPaused("a moment ago"), False),
    ],
    ids=["failed", "paused"],
)
async def test_a_forward_refused_leaves_the_messages_to_this_worker(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    logged: bool,
) -> None:
    _source, broker, seen = worker_world(monkeypatch, forward_error=error)

    batched = recorded(broker, seen, 3)

    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(3)]
        await sent[-1].wait_result(timeout=5)
    assert seen.batches == [[0, 1, 2]]
    assert sorted(broker.acked) == sorted(task.task_id for task in sent)
    assert ("cannot forward 1 message(s)" in caplog.text) is logged


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
