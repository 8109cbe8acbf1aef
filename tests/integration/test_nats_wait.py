"""Batches taken under NATS leases go through the one lifecycle (``wait_in_broker``).

A lease's round is a taken batch like a Redis source's
(``worker/taken.py``): each message is accepted alone, a bad one fails
alone, and what a round taken full loses stays open while the next round
asks for what it lacks; a ``batch_deadline`` ends a round early. A plain
producer's message is moved to its task's subject without holding up the
worker's reads, and acked once stored (or handed back when the stream
does not answer). Against
the real NATS server (``NATS_URL``), one worker (taskiq's Receiver) in
this process; each test has streams of its own, deleted afterwards.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from taskiq import TaskiqDepends, TaskiqResult
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq.kicker import AsyncKicker
from taskiq_nats import PullBasedJetStreamBroker

from taskiq_batching import (
    BatchInfo,
    BatchingMiddleware,
    BatchItemError,
    PerItem,
    batch_task,
    per_item,
)
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats import NatsTransport
from taskiq_batching.transports.nats_send import batch_stream
from tests.helpers import running_worker
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[PullBasedJetStreamBroker]:
    """A broker whose batched tasks wait in it; its streams deleted after."""
    name = f"tb-wait-{uuid.uuid4().hex[:10]}"
    made = PullBasedJetStreamBroker(
        nats_url, subject=f"{name}.tasks", stream_name=name, durable=name
    )
    made.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    made.add_middlewares(BatchingMiddleware(wait_in_broker=True))
    yield made
    client = await nats.connect(nats_url)
    try:
        for stream in (name, batch_stream(made)):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


async def result(task: Any) -> TaskiqResult[Any]:
    return await task.wait_result(timeout=15)  # type: ignore[no-any-return]


async def test_a_bad_message_fails_alone_and_its_batch_mates_run_together(
    broker: PullBasedJetStreamBroker,
) -> None:
    """Size only, batches of 2: good, bad (NaN: refused), good.

    The first round (good, bad) loses the bad one; the good one waits in
    the worker while the next round asks for 1, and the two good ones run
    together.
    """

    @batch_task(
        broker, task_name="costly", batch_size=2, batch_cost=float, batch_max_cost=1e9
    )
    async def costly(items: list[float]) -> PerItem[list[float]]:
        return per_item([item, len(items)] for item in items)

    await broker.startup()
    async with running_worker(broker, run_startup=False):
        first = await costly.kiq(1.0)
        bad = await costly.kiq(float("nan"))
        second = await costly.kiq(2.0)
        good = [(await result(t)).return_value for t in (first, second)]
        failed = await result(bad)
    assert good == [[1.0, 2], [2.0, 2]]
    assert isinstance(failed.error, BatchItemError)


async def test_a_batch_deadline_ends_the_round_by_it(
    broker: PullBasedJetStreamBroker,
) -> None:
    """``batch_timeout=60``: a message due in 0.3 s takes its round with it then."""

    @batch_task(broker, task_name="urgent", batch_size=10, batch_timeout=60)
    async def urgent(
        items: list[int], batch: BatchInfo = TaskiqDepends()
    ) -> PerItem[list[Any]]:
        return per_item([[batch.flush_reason.value, items]] * len(items))

    await broker.startup()
    async with running_worker(broker, run_startup=False):
        calm = await urgent.kiq(1)
        sent = time.time()
        soon = urgent.kicker().with_labels(batch_deadline=sent + 0.3)
        hurried = await soon.kiq(2)
        outcomes = [(await result(t)).return_value for t in (calm, hurried)]
        waited = time.time() - sent
    assert outcomes == [["deadline", [1, 2]]] * 2
    assert waited < 10  # by its deadline, not by batch_timeout


class Stream:
    """Stands in for the batch stream: answers moves only when told (core NATS).

    Without the batch stream (no batched task is configured, so the
    transport never creates it), a move's publish reaches only this
    subscriber, which keeps each request until ``answer``.
    """

    def __init__(self, client: Any, subject: str) -> None:
        self.client = client
        self.subject = subject
        self.requests: list[Any] = []
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        await self.client.subscribe(f"{self.subject}.batch.>", cb=self._on_request)
        await self.client.flush()

    async def _on_request(self, message: Any) -> None:
        self.requests.append(message)
        self.arrived.set()

    async def answer(self) -> None:
        for seq, request in enumerate(self.requests, 1):
            await self.client.publish(request.reply, b'{"stream":"x","seq":%d}' % seq)
        await self.client.flush()


@contextlib.asynccontextmanager
async def moving(
    broker: PullBasedJetStreamBroker, nats_url: str
) -> AsyncIterator[tuple[NatsTransport, Stream, Delivery]]:
    """A waiting transport that read one plain message, and the stand-in stream."""
    await broker.startup()
    transport = NatsTransport(broker, wait_in_broker=True)
    client = await nats.connect(nats_url)
    try:
        stream = Stream(client, broker.subject)
        await stream.start()
        kicker: AsyncKicker[Any, Any] = AsyncKicker("plain", broker, {})
        await kicker.kiq(1)
        (delivery,) = await transport.read(10)
        yield transport, stream, delivery
    finally:
        await transport.close()
        await client.close()
        await broker.shutdown()


async def ack_pending(broker: PullBasedJetStreamBroker) -> int:
    return (await broker.consumer.consumer_info()).num_ack_pending or 0


async def test_a_move_returns_before_the_stream_answers_and_acks_after_it(
    broker: PullBasedJetStreamBroker, nats_url: str
) -> None:
    """The worker reads on while a move is stored; its original is acked after.

    Before, each read awaited every move's answer (then the acks' flush):
    here that would be the 5 s timeout.
    """
    async with moving(broker, nats_url) as (transport, stream, delivery):
        assert transport.forwarder is not None
        task: Any = SimpleNamespace(task_name="plain")
        await asyncio.wait_for(transport.forwarder.forward([(delivery, task, "-")]), 1)
        await asyncio.wait_for(stream.arrived.wait(), 5)
        assert await ack_pending(broker) == 1  # not stored yet: not acked
        await stream.answer()

        async def acked() -> bool:
            return await ack_pending(broker) == 0

        await eventually(acked, 5, "the original acked once its move is stored")


async def test_an_unanswered_move_is_handed_back_and_moved_again(
    broker: PullBasedJetStreamBroker, nats_url: str
) -> None:
    """No answer in time: stored or not, nobody knows; nak'ed, read again at once.

    It is moved again by whoever reads it (a copy stored before is dropped
    by the duplicate window); it is not batched by this worker (``waited``).
    """
    async with moving(broker, nats_url) as (transport, _, delivery):
        forwarder: Any = transport.forwarder
        forwarder.timeout_seconds = 0.2
        task: Any = SimpleNamespace(task_name="plain")
        await asyncio.wait_for(forwarder.forward([(delivery, task, "-")]), 1)
        (again,) = await asyncio.wait_for(transport.read(10), 5)
        assert again.handle.sequence == delivery.handle.sequence
        assert again.data == delivery.data
        assert not forwarder.waited(again)
