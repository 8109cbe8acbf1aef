"""Giving back is paced: a queue of nothing but a saturated backlog is not spun."""

import asyncio
import time
from typing import Any

import pytest
from taskiq import BrokerMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker import giving
from taskiq_batching.worker.giving import GIVE_BACK_RATE, REST_SECONDS, GiveBacks
from taskiq_batching.worker.parking import Parking
from tests.helpers import QueueBroker, running_worker

pytestmark = pytest.mark.timeout(30)


class Requeuing:
    """A transport's ``requeue`` that only records what it got."""

    def __init__(self) -> None:
        self.given: list[str] = []

    async def requeue(
        self, given: list[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        self.given += [message.task_id for _, message in given]
        return []


def envelope(task_id: str) -> Envelope:
    return Envelope(task_id, "slow", {}, [1], {})


def test_a_whole_pass_of_nothing_but_give_backs_rests() -> None:
    giving_back = GiveBacks(Requeuing())  # type: ignore[arg-type]
    for task_id in ("a", "b", "c"):
        giving_back.give(Delivery(b"x"), envelope(task_id))
    assert giving_back.pause(0.0) == 0.0  # a pass is not over yet
    giving_back.give(Delivery(b"x"), envelope("a"))  # "a" again: it is
    assert giving_back.pause(0.0) == REST_SECONDS
    giving_back.other()  # something else came: reading on at once
    assert giving_back.pause(0.0) == 0.0


async def test_the_rate_is_bounded() -> None:
    transport = Requeuing()
    giving_back = GiveBacks(transport)  # type: ignore[arg-type]
    parked: Any = None
    for n in range(int(GIVE_BACK_RATE) + 10):
        giving_back.give(Delivery(b"x"), envelope(str(n)))
    assert giving_back.pause(0.0) == 0.0
    await giving_back.send(parked)
    # A second's burst spent, and ten more: a hundredth of a second to wait.
    assert giving_back.pause(0.0) == pytest.approx(11 / GIVE_BACK_RATE)
    assert giving_back.pause(1.0) == 0.0  # earned back


class CountingBroker(QueueBroker):
    """Counts the messages of ``slow`` sent (by the test, then given back)."""

    def __init__(self) -> None:
        super().__init__()
        self.kicks = 0
        self.passes = asyncio.Event()
        self.wanted = 0

    async def kick(self, message: BrokerMessage) -> None:
        if message.task_name == "slow":
            self.kicks += 1
            if self.wanted and self.kicks >= self.wanted:
                self.passes.set()
        await super().kick(message)


async def test_a_worker_rests_between_passes_over_a_backlog_it_cannot_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("taskiq_batching.worker.parking.PARK_LIMIT", 2)
    monkeypatch.setattr(giving, "REST_SECONDS", 0.5)
    counting = CountingBroker().with_middlewares(BatchingMiddleware())
    counting.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    gate = asyncio.Event()

    @batch_task(counting, task_name="slow", batch_size=2)
    async def slow(items: list[int]) -> None:
        await gate.wait()

    backlog = 20
    in_queue = backlog - 4 - 2  # held (4) and parked (2) stay in the worker
    async with running_worker(counting):
        for n in range(backlog):
            await slow.kiq(n)
        started = time.monotonic()
        counting.wanted = backlog + 3 * in_queue  # three passes given back
        await asyncio.wait_for(counting.passes.wait(), 20)
        # At full speed three passes take milliseconds; paced, each whole
        # pass that found nothing else is followed by a rest.
        assert time.monotonic() - started >= 2 * 0.5
        gate.set()


class Failing:
    """A transport whose re-send fails."""

    async def requeue(
        self, given: list[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        raise ConnectionError("broker away")


async def test_what_cannot_be_given_back_stays_parked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    giving_back = GiveBacks(Failing())  # type: ignore[arg-type]
    parked = Parking()
    for task_id in ("a", "b"):
        giving_back.give(Delivery(task_id.encode()), envelope(task_id))
    await giving_back.send(parked)
    assert [d.data for d in parked.clear()] == [b"a", b"b"]  # not lost
    assert "cannot give 2 message(s) back" in caplog.text


async def test_a_backlog_whose_batches_end_soon_is_not_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A queue being drained: parking fills at once, but the task gets room
    # within the grace each time, so nothing is re-sent (each give-back
    # would cost the broker a second send and the worker a second read).
    monkeypatch.setattr("taskiq_batching.worker.parking.PARK_LIMIT", 2)
    counting = CountingBroker().with_middlewares(BatchingMiddleware())
    counting.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    ran: list[int] = []

    @batch_task(counting, task_name="slow", batch_size=2, batch_concurrency=1)
    async def slow(items: list[int]) -> None:
        await asyncio.sleep(0.005)  # the batch's work, far under the grace
        ran.extend(items)

    backlog = 40
    async with running_worker(counting):
        tasks = [await slow.kiq(n) for n in range(backlog)]
        for task in tasks:
            await task.wait_result(timeout=20)
    assert sorted(ran) == list(range(backlog))
    assert counting.kicks == backlog, "messages were given back"


def test_what_a_read_brings_past_a_full_parking_is_parked_during_the_grace() -> None:
    giving_back = GiveBacks(Requeuing())  # type: ignore[arg-type]
    grace = giving.GIVE_BACK_GRACE
    assert not giving_back.saturated(10.0)  # parking just found full
    assert not giving_back.saturated(10.0 + grace / 2)
    assert giving_back.saturated(10.0 + grace)  # no room for the whole grace
    giving_back.room_came()
    assert not giving_back.saturated(20.0)  # the grace starts over
