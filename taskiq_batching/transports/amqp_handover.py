"""RabbitMQ: a worker that is behind on a task passes its queue's active role on.

A batched task's queue has a single active consumer (``amqp_batches.py``):
at low rates that one process sees the task's whole rate and fills its
batches as one worker would. With a backlog, it would also run every
batch while its siblings idle. So a worker whose consumer of a task's
queue holds its whole prefetch (``limit``: its running batches, a
filling buffer and the next batch: nothing more comes until it acks)
cancels that consumer: RabbitMQ makes
the next waiting consumer (another worker's) active, which gets the
next messages, while this one keeps and runs what it holds (a cancelled
consumer's unacked deliveries stay with its channel: acked when their
batch is stored, requeued if the process dies). Once it has room for a
batch again (``limit - batch_size`` or fewer unsettled) it consumes
again, behind the others in RabbitMQ's line, with a prefetch of its
room (never more than ``limit`` unsettled in all).

Measured on RabbitMQ 3.10.8: after ``basic.cancel`` of the active
consumer, the next one got its first delivery within ~7 ms; the
cancelled consumer's unacked deliveries stayed with it, its acks went
through, and when its connection closed they were ready again.
(``basic.get``, the other way a sibling could take a batch, is refused
on such a queue: ``RESOURCE_LOCKED``, "basic.get operations are not
supported by quorum queues with single active consumer".)

At low rates a worker never holds its whole prefetch (it runs each batch
at its timeout), so the role never moves and fill is that of one worker.
At saturation each passing worker holds whole batches (a single key
fills its buffer before the next), so a sibling never takes a partial
one; with ``batch_max_keys``, a key's partial buffer may stay with the
worker that passed the role and run at its timeout beside the next
active consumer's (saturation only).
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.amqp_window import Pace, Solo

logger = logging.getLogger("taskiq_batching")

#: Longest a cancel waits for RabbitMQ's answer, in seconds.
CANCEL_TIMEOUT = 10.0

#: Consumes a queue on a channel under a consumer tag (the transport's).
Consume = Callable[[Any, Any, str], Awaitable[None]]
#: Drops consumers (by tag) from the transport's list.
Forget = Callable[[list[str]], None]


def new_tag() -> str:
    """A task queue's consumer tag."""
    return f"tb.batch.{uuid.uuid4().hex}"


class Handover:
    """One batched task's consumer in this worker: active, or passed on.

    :param task_name: the batched task whose queue it consumes.
    :param channel: the aio-pika channel the task's queue is consumed on.
    :param queue: the task's aio-pika queue.
    :param tag: the consumer's tag (consuming already).
    :param limit: its prefetch (``max_held + batch_size``).
    :param batch_size: the task's.
    :param batch_timeout: the task's, in seconds (None: none).
    :param cap: the most unsettled when it works quickly (``amqp_window.py``;
        None: ``limit`` always).
    """

    def __init__(
        self,
        task_name: str,
        channel: Any,
        queue: Any,
        tag: str,
        limit: int,
        batch_size: int,
        batch_timeout: float | None,
        cap: int | None = None,
    ) -> None:
        self.task_name = task_name
        self.channel = channel
        self.queue = queue
        #: The consuming tag; None while the role is passed on.
        self.tag: str | None = tag
        self.limit = limit
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        #: The consumer's prefetch (``limit``, then its room when it resumed).
        self.window = limit
        #: The most unsettled with this consumer (``limit``, or ``cap``: quick).
        self.bound = limit
        #: Whether this consumer has had deliveries (it was active).
        self.served = False
        #: The role was passed on and no delivery came since (``passed``).
        self.behind = False
        self.pace = Pace(limit, limit if cap is None else max(cap, limit))
        self.solo = Solo()
        #: The aiormq channel under ``channel`` (its deliveries' handles).
        self.underlay: Any = None
        #: Cancelled tags whose deliveries may still be unsettled.
        self.retired: list[str] = []
        #: The cancel or consume under way.
        self.moving: asyncio.Future[None] | None = None
        #: Called when it is done (acks that came meanwhile were not checked).
        self.after: Callable[[], None] = lambda: None

    def check(
        self, pending: dict[int, str], stopping: bool, consume: Consume, forget: Forget
    ) -> None:
        """Pass the role on, or consume again, as ``pending`` says.

        :param pending: the channel's deliveries not settled yet, by tag.
        :param stopping: the worker stops (it never consumes again).
        :param consume: the transport's (it lists the consumer to cancel).
        :param forget: the transport's (no longer cancelled at stop).
        """
        if stopping or (self.moving is not None and not self.moving.done()):
            return  # a stop cancels the listed consumer itself
        unsettled = len(pending)
        if self.tag is not None and self._passes(pending):
            tag, self.tag = self.tag, None
            self.behind = True
            forget([tag])
            self.retired.append(tag)
            self.moving = asyncio.ensure_future(self._cancel(tag, unsettled))
            self.moving.add_done_callback(lambda _: self.after())
        elif self.tag is None and unsettled <= self.limit - self.batch_size:
            tag = self.tag = new_tag()
            self.bound = self.pace.bound(unsettled, self.pace.clock())
            self.window, self.served = self.bound - unsettled, False
            self.moving = asyncio.ensure_future(
                self._consume(consume, tag, self.window)
            )
            self.moving.add_done_callback(lambda _: self.after())

    def passed(self, pending: dict[int, str]) -> bool:
        """Whether nothing more of the task comes here: its role is elsewhere.

        From the pass until a delivery to the consumer that took the role
        again: consuming again puts it behind the others in RabbitMQ's line
        (its first ack can consume again already), so only a delivery says
        it is active. Meanwhile a partial buffer of the task cannot grow.

        :param pending: the channel's deliveries not settled yet, by tag.
        :return: True while the role is elsewhere.
        """
        if self.behind and self.tag is not None and self.tag in pending.values():
            self.behind = False
        return self.behind

    def _passes(self, pending: dict[int, str]) -> bool:
        """Whether to pass the role on now (full and not kept, or idle)."""
        now = self.pace.clock()
        if self.solo.consumed_at is not None:
            self.solo.saw(self.tag in pending.values(), now)
        # Only a quick (grown) consumer keeps it: slow batches are shared.
        kept = self.bound > self.limit and self.solo.holds(now)
        return (self._full(pending) and not kept) or self._idle(pending)

    def _full(self, pending: dict[int, str]) -> bool:
        """Whether the consumer holds its whole prefetch (nothing more comes).

        A grown one (``amqp_window.py``) passes the role on once it holds
        ``limit``: the rest of its window keeps coming while the cancel
        goes through, so the queue does not wait for it.
        """
        full = min(self.window, self.limit)
        if len(pending) < full:
            return False
        tag = self.tag
        return sum(1 for consumer in pending.values() if consumer == tag) >= full

    def _idle(self, pending: dict[int, str]) -> bool:
        """Whether a grown window served and holds nothing (``amqp_window.py``)."""
        if self.bound <= self.limit:
            return False
        if not self.served:
            self.served = self.tag in pending.values()
            return False
        self.pace.shrink = not pending
        return self.pace.shrink

    async def _cancel(self, tag: str, held: int) -> None:
        clock = self.pace.clock
        start = clock()
        try:
            await self.queue.cancel(tag, timeout=CANCEL_TIMEOUT)
            self.pace.passed(held, start, clock() - start)
        except Exception as exc:  # its channel closed: nothing is consumed
            logger.warning(
                "taskiq_batching: cannot pass on the consumer of %s: %s",
                self.queue.name,
                describe(exc),
            )

    async def _consume(self, consume: Consume, tag: str, room: int) -> None:
        try:
            # Per consumer (global=False): only this one's, within the limit.
            await self.channel.set_qos(prefetch_count=room)
            # A robust channel reopened since holds a new one.
            self.underlay = await self.channel.get_underlay_channel()
            start = self.pace.clock()
            await consume(self.channel, self.queue, tag)
            end = self.pace.clock()
            self.pace.consume_s = end - start
            self.solo.consumed(end, (self.pace.cancel_s or 0.0) + end - start)
        except Exception as exc:  # its channel closed: the worker goes on
            self.tag = None  # tried again at the next check
            logger.warning(
                "taskiq_batching: cannot consume %s again: %s",
                self.queue.name,
                describe(exc),
            )

    async def settled(self) -> None:
        """Wait for the cancel or consume under way (never cancelled inside)."""
        if self.moving is not None:
            await asyncio.shield(self.moving)
