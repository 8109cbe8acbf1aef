"""RabbitMQ: how much a task's consumer prefetches each time it consumes again.

A worker whose task consumer holds its whole prefetch passes the queue's
active role on and consumes again once it has room (``amqp_handover.py``).
That shares a backlog of slow batches, but each pass costs two RPCs
(``basic.cancel``, ``basic.consume``: Raft commands on a quorum queue) and
a gap in deliveries. With an instant task the consumer is full every
window: measured on a drain of 30,000 (one worker, prefetch 300), it
passed the role 138 times, about every 17 ms, to itself. A passed role
helps only when what the worker holds takes longer to work off than the
role takes to move; a larger window, not a moved role, then serves.

``basic.qos`` cannot resize a running consumer (``global=False``:
RabbitMQ 3.10.8 kept a quorum queue's consumer at prefetch 10 after
``set_qos(50)`` on its channel), so the window is chosen when the worker
consumes again, from what it saw since it passed the role on:

* **quick**: it worked off what it held at a pace at which its ``limit``
  (``max_held + batch_size``) takes less than ``QUICK_RATIO`` round trips
  of a pass (its last ``basic.cancel`` and ``basic.consume``): the next
  window fills up to ``cap`` unsettled (its ``max_held`` and parking's
  share of the broker's prefetch, half of it, at most ``PARK_SHARE``:
  what is read beyond ``max_held`` is parked, never given back);
* otherwise (slow batches): up to ``limit``, as before, so that a slow
  backlog is shared between processes in windows of ``limit``.

A grown consumer passes the role on once it holds ``limit``, not its
whole window: the rest keeps coming while the cancel goes through, so
the queue does not wait on it (at two workers, a window of 500 delivered
then passed measured one process's rate: the queue idle for each cancel).
A grown window the worker no longer fills (nothing unsettled: the drain
ended) is passed on and consumed again at ``limit``: a slow backlog that
comes later is not prefetched whole by one process.

A quick consumer alone on its queue (``Solo``) keeps the role for a
while: under single active consumer a waiting sibling becomes active at
a cancel, and the consumer that consumes again is one in line, with no
deliveries until the role comes back. Deliveries to the new consumer
within ``ALONE_SHARE`` of a pass's round trip after its ``basic.consume``
answered say that nobody took the role (one worker: each pass only left
the queue without a consumer, ~18 ms, 58-60 times in a drain of 30,000;
a sibling that passes the role back takes a cancel, ~half a round trip).
It then
passes once it has held the role ``hold_s``: ``HOLD_TRIPS`` round trips,
doubled at each pass found alone in turn, at most ``MAX_HOLD_S``, so a
sibling that joins later waits that long at most. A pass that found the
role taken (no delivery that soon) passes at every full
window again. Slow batches always pass (both siblings may have left the
queue without a consumer: the one consuming again gets its deliveries at
once, alone or not).
"""

import time
from collections.abc import Callable

#: A pass of the role is worth it only if working off ``limit`` takes at
#: least this many of its round trips (an instant task's drain: ~1.5, from
#: a cancel and a consume of ~9 ms each and 100 worked off in ~9 ms; by
#: the same round trip, a batch of 100 awaiting 50 ms: ~9; of 10
#: awaiting 200 ms, as tests/integration/test_amqp_handover.py: ~30).
QUICK_RATIO = 4.0
#: The most parked messages a grown window may bring (``worker/parking.py``).
PARK_SHARE = 1_000
#: A quick consumer found alone first keeps the role this many round trips.
HOLD_TRIPS = 4.0
#: Deliveries within this share of a pass's round trip after the consume
#: answered: alone (a waiting sibling takes the role with a cancel, ~half
#: a round trip; at two workers a whole round trip judged alone wrongly).
ALONE_SHARE = 0.125
#: The longest it keeps it (a sibling that joins waits that long), seconds.
MAX_HOLD_S = 0.5


def grown_cap(limit: int, batch_size: int, prefetch: int | None) -> int:
    """The most a quick consumer may hold unsettled.

    :param limit: its window when slow (``max_held + batch_size``).
    :param batch_size: the task's.
    :param prefetch: the broker's (the main queue's) prefetch, if any.
    :return: ``max_held`` plus what parking keeps (half the prefetch).
    """
    share = PARK_SHARE if prefetch is None else min(PARK_SHARE, prefetch // 2)
    return max(limit, limit - batch_size + share)


class Pace:
    """What one task's consumer saw since it last passed the role on.

    :param limit: its window when slow.
    :param cap: its window, unsettled included, when quick (``grown_cap``).
    """

    def __init__(self, limit: int, cap: int) -> None:
        self.limit = limit
        self.cap = cap
        #: Its last ``basic.cancel`` and ``basic.consume``, in seconds.
        self.cancel_s: float | None = None
        self.consume_s: float | None = None
        #: When it passed the role on (loop time), holding this many.
        self.passed_at = 0.0
        self.held = 0
        #: The next window is ``limit``'s whatever the pace (an idle grown one).
        self.shrink = False
        #: Seconds, monotonic.
        self.clock: Callable[[], float] = time.monotonic

    def passed(self, held: int, at: float, cancel_s: float) -> None:
        """The role was passed on at ``at``, holding ``held``, in ``cancel_s``."""
        self.held, self.passed_at, self.cancel_s = held, at, cancel_s

    def bound(self, unsettled: int, now: float) -> int:
        """The most unsettled in all once it consumes again (its window + these).

        :param unsettled: what it holds now.
        :param now: the loop's time.
        :return: ``cap`` when quick, else ``limit``.
        """
        quick = not self.shrink and self.quick(unsettled, now)
        self.shrink = False
        return self.cap if quick else self.limit

    def quick(self, unsettled: int, now: float) -> bool:
        """Whether ``limit`` is worked off faster than the role moves, by far."""
        if self.cancel_s is None:
            return False
        worked, elapsed = self.held - unsettled, now - self.passed_at
        if worked <= 0 or elapsed <= 0:
            return False
        # Before the first measured consume, a consume costs what a cancel does.
        consume_s = self.cancel_s if self.consume_s is None else self.consume_s
        round_trip = self.cancel_s + consume_s
        return self.limit * elapsed / worked < QUICK_RATIO * round_trip


class Solo:
    """Whether a quick consumer is alone on its queue, and how long it keeps it."""

    def __init__(self) -> None:
        #: When its ``basic.consume`` answered (monotonic seconds); None: judged.
        self.consumed_at: float | None = None
        self.since = 0.0
        #: A pass's round trip (its cancel and consume), seconds.
        self.round_trip = 0.0
        #: How long it keeps the role once consumed (0: it passes when full).
        self.hold_s = 0.0

    def consumed(self, at: float, round_trip: float) -> None:
        """It consumes again at ``at``; a pass takes ``round_trip`` seconds."""
        self.consumed_at, self.since, self.round_trip = at, at, round_trip

    def saw(self, delivered: bool, now: float) -> None:
        """Judge once: deliveries soon after the consume, or none for longer.

        :param delivered: the new consumer has had deliveries.
        :param now: monotonic seconds.
        """
        if self.consumed_at is None:
            return
        soon = now - self.consumed_at <= ALONE_SHARE * self.round_trip
        if delivered and soon:  # nobody took the role: hold it longer
            first = HOLD_TRIPS * self.round_trip
            self.hold_s = min(MAX_HOLD_S, max(first, 2 * self.hold_s))
        elif not soon:  # a sibling is active (or nothing is left)
            self.hold_s = 0.0
        else:
            return
        self.consumed_at = None

    def holds(self, now: float) -> bool:
        """Whether it keeps the role although full (alone, not for long yet)."""
        if self.consumed_at is not None or self.hold_s <= 0:
            return False
        return now - self.since < self.hold_s
