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
