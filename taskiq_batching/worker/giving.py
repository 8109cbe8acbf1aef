"""Giving back: messages of a saturated batched task, re-sent behind the queue.

The broker is one queue for every task. A worker reads past a backlog of
a batched task it cannot take yet by parking that task's messages
(``parking.py``); parking is bounded, and past its bounds a worker that
stopped reading would leave every message behind the backlog waiting,
however short (head-of-line blocking). So past them, a worker whose
transport can (its ``requeue``) gives the task's messages back to the
tail of the queue, as read (task_id, labels, send time where the broker
keeps one), and reads on. Only a message of a task with no room and
nothing behind it that parking could still take is given back; a plain
message never is.

A queue that holds nothing but such a backlog must not be cycled at full
speed, so giving back is paced:

* at most ``GIVE_BACK_RATE`` messages a second per worker (a token bucket
  with a one-second burst);
* once a whole pass over the queue found nothing else (the pass's first
  message given back is read again, nothing else read in between), the
  worker rests ``REST_SECONDS`` before it reads again, or less if its
  batched tasks get room meanwhile;
* a worker reads past a full parking only once its task has had no room
  for ``GIVE_BACK_GRACE`` seconds: a backlog whose batches end sooner (a
  queue being drained) is never cycled through the broker, which would
  cost a re-send and a second read per message given back.

A backlog of ``B`` messages that no worker can take costs the broker, per
worker, at most ``min(B / REST_SECONDS, GIVE_BACK_RATE)`` messages read and
re-sent a second; a message queued behind it waits for at most the grace,
one rest and one pass (``B / GIVE_BACK_RATE`` seconds) on top of the
worker's ordinary latency.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.core.buffer import Envelope
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.base import Requeue, Transport, requeuer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.parking import Parking

logger = logging.getLogger("taskiq_batching")

#: Messages a worker gives back a second at most.
GIVE_BACK_RATE = 1000.0
#: Seconds a worker rests after a whole pass over the queue found only
#: messages it gave back (less if its batched tasks get room).
REST_SECONDS = 1.0
#: Seconds a full parking waits for its task's room before the worker
#: reads past it, giving messages back.
GIVE_BACK_GRACE = 0.25

Given = tuple[Delivery, BrokerMessage]


class GiveBacks:
    """Which messages a worker gives back, and when it may read on.

    :param transport: the broker's transport (its ``requeue``, if any).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        #: Given back since the last read's routing, to be sent.
        self.pending: list[Given] = []
        #: task_id of the first message given back since anything else was
        #: read: reading it again closes a pass over the queue.
        self.first: str | None = None
        #: A whole pass found only messages given back.
        self.passed = False
        self.tokens = GIVE_BACK_RATE
        self._stamp: float | None = None
        #: When parking was last found full with no room since (loop time).
        self._full_since: float | None = None

    @property
    def requeue(self) -> Requeue | None:
        """The transport's ``requeue`` now (a generic one learns it has acks)."""
        return requeuer(self.transport)

    @property
    def enabled(self) -> bool:
        """Whether the transport can give messages back to the tail of the queue."""
        return self.requeue is not None

    def give(self, delivery: Delivery, envelope: Envelope) -> None:
        """Give a message back (sent with the rest of its read, ``send``).

        :param delivery: as read.
        :param envelope: its decoded parts.
        """
        message = BrokerMessage(
            task_id=envelope.task_id,
            task_name=envelope.task_name,
            message=delivery.data,
            labels=envelope.labels,
        )
        self.pending.append((delivery, message))
        if self.first is None:
            self.first = envelope.task_id
        elif envelope.task_id == self.first:
            self.passed = True

    def other(self) -> None:
        """Something else was read: the pass goes on from here."""
        self.first = None
        self.passed = False

    async def send(self, parked: Parking) -> None:
        """Send what was given back to the tail of the queue.

        What the transport could not give back (not acked) is parked
        instead (over parking's bounds: the worker then stops reading until
        room frees), and the failure is logged.

        :param parked: where they wait if they cannot be given back.
        """
        given, self.pending = self.pending, []
        if not given:
            return
        self.tokens -= len(given)
        try:
            requeue = self.requeue
            if requeue is None:  # the transport can no longer: never dropped
                raise RuntimeError("the transport cannot give messages back")
            kept = list(await requeue(given))
        except Exception as exc:
            kept = [delivery for delivery, _ in given]
            error = describe(exc)
        else:
            error = "the broker refused them"
        if kept:
            logger.error(
                "taskiq_batching: cannot give %d message(s) back to the tail of "
                "the queue: %s; kept by this worker until their task has room",
                len(kept),
                error,
            )
            names = {id(delivery): message.task_name for delivery, message in given}
            for delivery in kept:
                parked.park(names[id(delivery)], delivery)

    def room_came(self) -> None:
        """Parking's task got room, or parking is not full: the grace starts over."""
        self._full_since = None

    def saturated(self, now: float) -> bool:
        """Parking is full now: whether it has been for the whole grace.

        Until then, what a read brought past parking's bounds is parked
        (at most one read's worth more), not given back.

        :param now: the event loop's time.
        :return: True when messages past the bounds are to be given back.
        """
        if self._full_since is None:
            self._full_since = now
        return now - self._full_since >= GIVE_BACK_GRACE

    async def hold_off(self, now: float, room: Callable[[], Awaitable[Any]]) -> bool:
        """Wait for room, within the grace, before reading past a full parking.

        :param now: the event loop's time.
        :param room: waits until batched tasks may have room.
        :return: True when it waited (look at parked messages again);
            False when the grace is over (read on, giving back).
        """
        if self._full_since is None:
            self._full_since = now
        left = self._full_since + GIVE_BACK_GRACE - now
        if left <= 0:
            return False
        await _room_or_timeout(room, left)
        return True

    def take_pending(self) -> list[Delivery]:
        """What was given back and not sent (the worker stops).

        :return: those deliveries, in order.
        """
        given, self.pending = self.pending, []
        return [delivery for delivery, _ in given]

    async def rest(self, now: float, room: Callable[[], Awaitable[Any]]) -> bool:
        """Wait before the next read if giving back is paced now.

        :param now: the event loop's time.
        :param room: waits until batched tasks may have room.
        :return: whether it waited (then look at parked messages again).
        """
        if self.requeue is None:
            return False
        seconds = self.pause(now)
        if seconds <= 0:
            return False
        await _room_or_timeout(room, seconds)
        if self.passed:
            self.other()  # the next give-back starts a new pass
        return True

    def pause(self, now: float) -> float:
        """Seconds to wait before the next read.

        :param now: the event loop's time.
        :return: 0 to read now; else the rest after an idle pass, or the
            time until the rate allows one more message.
        """
        if self._stamp is not None:
            earned = (now - self._stamp) * GIVE_BACK_RATE
            self.tokens = min(self.tokens + earned, GIVE_BACK_RATE)
        self._stamp = now
        if self.passed:
            return REST_SECONDS
        if self.tokens < 1:
            return (1 - self.tokens) / GIVE_BACK_RATE
        return 0.0


async def _room_or_timeout(room: Callable[[], Awaitable[Any]], seconds: float) -> None:
    """Wait until batched tasks may have room, or ``seconds`` at most.

    :param room: waits until batched tasks may have room.
    :param seconds: the longest wait.
    """
    changed = asyncio.ensure_future(room())
    try:
        await asyncio.wait({changed}, timeout=seconds)
    finally:
        changed.cancel()
