"""A buffer's ``batch_timeout`` counts from its messages' ``Delivery.sent_at``."""

import asyncio
import math
import time
from collections.abc import Hashable
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_batching.core.analysis import analyse
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import MAX_AGE_SECONDS, Buffer, Envelope, Held
from taskiq_batching.settings import BatchSettings, FlushReason
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery

pytestmark = pytest.mark.timeout(10)

#: Clock reads a few lines apart: far below any timeout these tests use.
SLACK_SECONDS = 0.05
TIMEOUT_SECONDS = 5.0


async def collect(items: list[int]) -> None:
    return None


class Flushes:
    """Records the batcher's flushes instead of running batches."""

    def __init__(self) -> None:
        self.reasons: list[FlushReason] = []
        self.flushed = asyncio.Event()

    def __call__(self, key: tuple[str, Hashable], reason: FlushReason) -> None:
        self.reasons.append(reason)
        self.flushed.set()


def batcher_for(**settings: Any) -> tuple[Batcher, Flushes]:
    batcher = Batcher(InMemoryBroker())
    batcher.register(
        BatchSpec(
            task_name="collect",
            settings=BatchSettings(**{"batch_size": 100, **settings}),
            signature=analyse("collect", collect),
            timeout=None,
        )
    )
    flushes = Flushes()
    batcher.flush = flushes  # type: ignore[method-assign]
    return batcher, flushes


def add(batcher: Batcher, number: int, sent_at: Any) -> float:
    """Add a message read now; return its read time (event-loop seconds)."""
    arrived = asyncio.get_running_loop().time()
    delivery = Delivery(b"x", number, sent_at=sent_at)
    envelope = Envelope(str(number), "collect", {}, [number], {})
    batcher.add("collect", Held(envelope, None, arrived, delivery=delivery))
    return arrived


def the_buffer(batcher: Batcher) -> Buffer:
    (buffer,) = batcher.buffers.values()
    assert buffer.timer is not None
    return buffer


async def test_the_timer_counts_from_the_send() -> None:
    batcher, _ = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    arrived = add(batcher, 1, time.time() - 2.0)
    due = the_buffer(batcher).timer.when()  # type: ignore[union-attr]
    assert due == pytest.approx(arrived - 2.0 + TIMEOUT_SECONDS, abs=SLACK_SECONDS)


async def test_without_a_send_time_it_counts_from_the_read() -> None:
    batcher, _ = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    arrived = add(batcher, 1, None)
    due = the_buffer(batcher).timer.when()  # type: ignore[union-attr]
    assert due == pytest.approx(arrived + TIMEOUT_SECONDS, abs=SLACK_SECONDS)


@pytest.mark.parametrize(
    "sent_at",
    [
        pytest.param(time.time() + 3600.0, id="an hour ahead"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="-inf"),
        pytest.param(math.nan, id="nan"),
        pytest.param(True, id="a bool"),
        pytest.param("yesterday", id="a string"),
        pytest.param(10**400, id="an int too big for a float"),
    ],
)
async def test_a_send_time_in_the_future_or_not_a_number_never_stretches_the_wait(
    sent_at: Any,
) -> None:
    batcher, flushes = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    arrived = add(batcher, 1, sent_at)
    buffer = the_buffer(batcher)
    due = buffer.timer.when()  # type: ignore[union-attr]
    assert due == pytest.approx(arrived + TIMEOUT_SECONDS, abs=SLACK_SECONDS)
    assert buffer.opened_at == pytest.approx(arrived, abs=SLACK_SECONDS)
    assert flushes.reasons == []


async def test_an_absurdly_old_send_time_flushes_at_once_and_stays_bounded() -> None:
    batcher, flushes = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    arrived = add(batcher, 1, 0.0)
    assert the_buffer(batcher).opened_at == pytest.approx(
        arrived - MAX_AGE_SECONDS, abs=SLACK_SECONDS
    )
    await flushes.flushed.wait()
    assert flushes.reasons == [FlushReason.TIMEOUT]


async def test_an_earlier_send_moves_the_timer_earlier_never_later() -> None:
    batcher, _ = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    now = time.time()
    arrived = add(batcher, 1, now - 1.0)
    buffer = the_buffer(batcher)
    add(batcher, 2, now - 0.5)  # later than the first: no change
    assert buffer.timer.when() == pytest.approx(  # type: ignore[union-attr]
        arrived - 1.0 + TIMEOUT_SECONDS, abs=SLACK_SECONDS
    )
    add(batcher, 3, now - 3.0)  # a redelivery sent before both
    assert buffer.timer.when() == pytest.approx(  # type: ignore[union-attr]
        arrived - 3.0 + TIMEOUT_SECONDS, abs=SLACK_SECONDS
    )
    assert len(buffer.items) == 3


@pytest.mark.parametrize("first", [-math.inf, math.inf, math.nan], ids=str)
async def test_a_send_time_ignored_first_lets_a_later_real_one_move_the_timer(
    first: float,
) -> None:
    batcher, _ = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    arrived = add(batcher, 1, first)  # ignored: the timer counts from the read
    buffer = the_buffer(batcher)
    add(batcher, 2, time.time() - 3.0)  # sent before the first was read
    assert buffer.timer.when() == pytest.approx(  # type: ignore[union-attr]
        arrived - 3.0 + TIMEOUT_SECONDS, abs=SLACK_SECONDS
    )


async def test_sends_in_the_same_millisecond_keep_the_timer_armed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A chunk of stream entries shares one millisecond's send time and one
    # loop reading, while the wall clock moves on between them: each would
    # convert a few microseconds earlier than the last.
    batcher, _ = batcher_for(batch_timeout=TIMEOUT_SECONDS)
    wall = [time.time()]

    def ticking() -> float:
        wall[0] += 0.00001
        return wall[0]

    monkeypatch.setattr(time, "time", ticking)
    sent_at, now = wall[0] - 0.2, asyncio.get_running_loop().time()
    timers = []
    for number in range(50):
        delivery = Delivery(b"x", number, sent_at=sent_at)
        envelope = Envelope(str(number), "collect", {}, [number], {})
        batcher.add("collect", Held(envelope, None, now, delivery=delivery), now)
        timers.append(the_buffer(batcher).timer)
    assert all(timer is timers[0] for timer in timers)  # armed once
    assert not any(timer.cancelled() for timer in timers)  # type: ignore[union-attr]


async def test_max_wait_counts_from_the_send_too() -> None:
    batcher, flushes = batcher_for(
        batch_timeout=0.01, min_size=5, max_wait=TIMEOUT_SECONDS
    )
    # Sent before max_wait: overdue at once (counted from the read, it
    # would wait TIMEOUT_SECONDS more below min_size).
    arrived = add(batcher, 1, time.time() - TIMEOUT_SECONDS - 1.0)
    await flushes.flushed.wait()
    assert flushes.reasons == [FlushReason.TIMEOUT]
    assert asyncio.get_running_loop().time() - arrived < TIMEOUT_SECONDS - 1.0
