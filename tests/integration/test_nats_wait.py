"""Batches taken under NATS leases go through the one lifecycle (``wait_in_broker``).

A lease's round is a taken batch like a Redis source's
(``worker/taken.py``): each message is accepted alone, a bad one fails
alone, and what a round taken full loses stays open while the next round
asks for what it lacks; a ``batch_deadline`` ends a round early. Against
the real NATS server (``NATS_URL``), one worker (taskiq's Receiver) in
this process; each test has streams of its own, deleted afterwards.
"""

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from taskiq import TaskiqDepends, TaskiqResult
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq_nats import PullBasedJetStreamBroker

from taskiq_batching import (
    BatchInfo,
    BatchingMiddleware,
    BatchItemError,
    PerItem,
    batch_task,
    per_item,
)
from taskiq_batching.transports.nats_send import batch_stream
from tests.helpers import running_worker

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
