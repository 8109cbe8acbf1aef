"""``amqp_window``: a quick consumer comes back with a larger window, a slow one not."""

from typing import Any

import pytest

from taskiq_batching.transports.amqp_handover import Handover
from taskiq_batching.transports.amqp_window import MAX_HOLD_S, Pace, Solo, grown_cap
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
    fleet.handover = Handover(
        "collect", fleet.channel, fleet.queue, "t0", 30, 10, 1.0, cap
    )
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
    clock.now += 2 * CANCEL_S  # nothing came for a round trip: a sibling took it
    fleet.deliver(29)
    fleet.handovers.check()
    assert fleet.handover.tag is not None
    fleet.deliver(1)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    assert len(fleet.queue.cancelled) == 2


async def test_a_quick_consumer_alone_keeps_the_role_for_a_while() -> None:
    """Deliveries at once after its consume: nobody took the role.

    Before, it passed the role on at every ``limit`` held, to itself, and
    the queue had no consumer for each cancel and consume.
    """
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.001)
    fleet.deliver(30)  # at once: alone
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is not None
    assert len(fleet.queue.cancelled) == 1
    clock.now += 4.5 * CANCEL_S  # past its hold: four round trips of a pass
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    assert len(fleet.queue.cancelled) == 2


async def test_a_slow_consumer_passes_the_role_even_if_alone() -> None:
    """Slow batches are shared: both siblings may leave the queue unconsumed."""
    fleet, clock = paced_fleet(cap=80)
    await fleet.start()
    await pass_and_work_off(fleet, clock, seconds=0.2)
    fleet.deliver(10)  # at once
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    assert len(fleet.queue.cancelled) == 2


def test_the_hold_doubles_while_alone_up_to_its_cap_and_resets_when_taken() -> None:
    solo, holds = Solo(), []
    for at in (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0):
        solo.consumed(at, 0.02)
        solo.saw(True, at + 0.001)
        holds.append(solo.hold_s)
    assert holds == pytest.approx([0.08, 0.16, 0.32, MAX_HOLD_S, *[MAX_HOLD_S] * 4])
    assert solo.holds(80.0 + MAX_HOLD_S - 0.01)
    assert not solo.holds(80.0 + MAX_HOLD_S)
    solo.consumed(90.0, 0.02)
    solo.saw(False, 90.001)  # nothing yet, but soon: not judged
    assert solo.hold_s == MAX_HOLD_S
    assert not solo.holds(90.001)  # nor kept before it is
    solo.saw(True, 90.01)  # half a round trip: a sibling passed it back
    assert solo.hold_s == 0.0
    assert not solo.holds(90.04)
