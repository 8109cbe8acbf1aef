"""``amqp_window``: a quick consumer comes back with a larger window, a slow one not."""

from typing import Any

import pytest

from taskiq_batching.transports.amqp_handover import Handover
from taskiq_batching.transports.amqp_window import Pace, grown_cap
from tests.unit.transports.test_amqp_handover import FakeQueue, Fleet

#: One ``basic.cancel`` of the fakes, in (fake) seconds.
CANCEL_S = 0.01


class Clock:
    """Seconds that pass only when told (a cancel takes ``CANCEL_S``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedQueue(FakeQueue):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def cancel(self, tag: str, timeout: float) -> None:
        self.clock.now += CANCEL_S
        await super().cancel(tag, timeout)


def paced_fleet(cap: int) -> tuple[Fleet, Clock]:
    """A handover of limit 30 (batches of 10) that may grow to ``cap``."""
    fleet, clock = Fleet(), Clock()
    fleet.queue = TimedQueue(clock)
    fleet.handover = Handover(fleet.channel, fleet.queue, "t0", 30, 10, 1.0, cap)
    fleet.handover.pace.clock = clock
    return fleet, clock


async def pass_and_work_off(fleet: Fleet, clock: Clock, seconds: float) -> None:
    """Fill the window (the role passes), then ack a batch after ``seconds``."""
    fleet.deliver(fleet.handover.window)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    clock.now += seconds
    fleet.settle(10)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is not None


async def test_a_quick_consumer_comes_back_with_a_grown_window() -> None:
    """A batch worked off in less than a round trip of the role: up to ``cap``.

    Before, it came back with its room (10), passing the role on to
    itself every 10 messages of an instant task's drain.
    """
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.001)
    assert fleet.channel.prefetch == [60]  # 80 unsettled in all, 20 held
    tag = fleet.handover.tag
    assert tag is not None
    assert fleet.limits[tag] == 80  # full (for flushing) at its own bound


async def test_a_slow_consumer_comes_back_with_its_room() -> None:
    """A batch that takes 0.2 s: the role keeps moving in windows of 30."""
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.2)
    assert fleet.channel.prefetch == [10]
    await pass_and_work_off(fleet, clock, seconds=0.2)
    assert fleet.channel.prefetch == [10, 10]


async def test_a_grown_window_left_idle_comes_back_at_limit() -> None:
    """The drain ended: a later slow backlog must not be prefetched whole."""
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.001)
    fleet.handovers.check()  # nothing came yet: it waits for its deliveries
    assert len(fleet.queue.cancelled) == 1
    fleet.deliver(5)
    fleet.handovers.check()
    fleet.settle(len(fleet.pending))
    fleet.handovers.check()  # served, and holds nothing: passed on
    await fleet.handovers.settled()
    assert len(fleet.queue.cancelled) == 2
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.channel.prefetch == [60, 30]
    assert fleet.handover.bound == 30


@pytest.mark.parametrize(
    ("held", "worked", "seconds", "quick"),
    [
        (300, 100, 0.009, True),  # an instant task's drain (measured)
        (300, 100, 0.05, False),  # a batch awaiting 50 ms: the role moves
        (30, 10, 0.2, False),  # a slow backlog
        (30, 0, 0.001, False),  # nothing worked off
    ],
)
def test_quick_compares_working_off_limit_with_the_round_trip(
    held: int, worked: int, seconds: float, quick: bool
) -> None:
    pace = Pace(held, held * 2)
    pace.passed(held, at=10.0, cancel_s=0.008)
    pace.consume_s = 0.008
    assert pace.quick(held - worked, 10.0 + seconds) is quick
    assert pace.bound(held - worked, 10.0 + seconds) == (held * 2 if quick else held)


def test_never_quick_before_a_pass_was_measured() -> None:
    assert not Pace(30, 60).quick(0, 1.0)


@pytest.mark.parametrize(
    ("prefetch", "cap"),
    [(1000, 700), (None, 1200), (10, 300)],
)
def test_grown_cap_is_max_held_plus_parkings_share(prefetch: Any, cap: int) -> None:
    assert grown_cap(300, 100, prefetch) == cap


async def test_a_grown_consumer_passes_the_role_once_it_holds_limit() -> None:
    """The rest of its window keeps coming while its cancel goes through.

    Before, it passed only once its whole window (60) had come: the queue
    delivered to no one for the cancel's round trip.
    """
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.001)
    assert fleet.handover.window == 60
    fleet.deliver(29)
    fleet.handovers.check()
    assert fleet.handover.tag is not None
    fleet.deliver(1)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    assert len(fleet.queue.cancelled) == 2
