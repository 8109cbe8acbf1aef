"""A task nothing more of comes to this worker runs its partial buffer at once.

RabbitMQ with ``wait_in_broker``: a worker that passed a task queue's
active role on gets nothing more of it (``Transport.passed_on``), so a
partial buffer of the task runs once the worker holds nothing else of it
(``pressure``), not at its ``batch_timeout``.
"""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from taskiq import AsyncBroker, TaskiqDepends

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.generic import GenericTransport, Listen
from tests.helpers import QueueBroker, Recorder, queue_broker, running_worker
from tests.unit.worker.fake_source import FillingForwarder, SourceTransport
from tests.unit.worker.taking_world import forwarding_world, recorded

pytestmark = pytest.mark.timeout(30)


class PassingTransport(GenericTransport):
    """The generic transport, saying which tasks were passed on."""

    passed: tuple[str, ...] = ()

    def __init__(self, broker: AsyncBroker, listen: Listen | None) -> None:
        super().__init__(broker, listen)
        self.reads = 0
        self.read_started = asyncio.Event()

    def passed_on(self) -> tuple[str, ...]:
        return self.passed

    async def read(self, limit: int) -> list[Delivery]:
        self.reads += 1
        self.read_started.set()
        return await super().read(limit)


async def idle(broker: QueueBroker, transport: PassingTransport, taken: int) -> None:
    """Wait until the worker read ``taken`` messages and waits on its next read."""
    while not (broker.taken == taken and transport.reads == taken + 1):
        transport.read_started.clear()
        await transport.read_started.wait()


async def until(batcher: Batcher, condition: Callable[[], bool]) -> None:
    """Wait for the batcher's changes until ``condition`` holds."""
    while not condition():
        await batcher.changed()


async def test_a_partial_buffer_of_a_task_passed_on_runs_when_its_batch_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = queue_broker()
    transports: list[PassingTransport] = []

    def transport_for(
        broker: AsyncBroker, listen: Listen | None = None, **options: Any
    ) -> GenericTransport:
        transports.append(PassingTransport(broker, listen))
        return transports[-1]

    monkeypatch.setattr("taskiq_batching.worker.hook.transport_for", transport_for)
    seen, kept_seen = Recorder(), Recorder()
    started, gate = asyncio.Event(), asyncio.Event()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def passed(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)
        started.set()
        await gate.wait()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def kept(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        kept_seen.record(items, info)

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    async with running_worker(broker):
        for i in range(10):
            await passed.kiq(i)
        await asyncio.wait_for(started.wait(), 10)
        # Its role is passed on now (its whole prefetch held, as on RabbitMQ).
        transports[-1].passed = (passed.task_name,)
        for i in range(3):
            await passed.kiq(10 + i)
            await kept.kiq(i)
        waiting = batcher.waiting
        names = (passed.task_name, kept.task_name)
        await asyncio.wait_for(
            until(batcher, lambda: [waiting[name] for name in names] == [3, 3]), 10
        )
        assert seen.sizes == [10]  # its batch runs: the buffer may still grow
        # No read comes to relieve it: the end of the batch must.
        await asyncio.wait_for(idle(broker, transports[-1], 16), 10)
        gate.set()  # the last batch of it ends: nothing else of it is held
        await asyncio.wait_for(broker.wait_acked(13), 10)
        assert (seen.sizes, seen.reasons) == ([10, 3], ["size", "pressure"])
        assert kept_seen.sizes == []  # not passed on: it waits its timeout
        assert batcher.waiting[kept.task_name] == 3
    assert kept_seen.reasons == ["shutdown"]


async def test_a_task_passed_on_whose_reads_fill_batches_here_keeps_filling_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RabbitMQ, a plain producer: a worker whose own reads fill its batches
    # batches them where it reads them (``own_share.py``), whoever holds
    # the task queue's role. Relieved before each read, its buffer ran
    # batches of a message or two (fill 0.13 at 2,000 msg/s on 8 workers).
    source, forwarder, broker, seen = forwarding_world(monkeypatch, FillingForwarder)
    batched = recorded(broker, seen, 3)
    monkeypatch.setattr(SourceTransport, "passed_on", lambda self: (batched.task_name,))
    async with running_worker(broker):
        sent = [await batched.kiq(i) for i in range(5)]
        for task in sent[2:]:
            assert not (await task.wait_result(timeout=5)).is_err
    # The first two reads were forwarded (a batch's worth was not read
    # yet); the third filled one here, and its buffer grew to a batch.
    assert forwarder.forwarded == 2
    assert source.left() == 2
    assert seen.batches == [[2, 3, 4]]
