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
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.amqp_inbox import Inbox
from taskiq_batching.transports.delivery import Delivery

logger = logging.getLogger("taskiq_batching")

#: Longest a read waits for a task's next overdue delivery (``burst``), in
#: seconds: RabbitMQ sends a new active consumer's backlog in one go.
BURST_GAP = 0.01
#: Longest a read waits in all for a batch's worth of them, in seconds.
BURST_MAX = 0.05

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

    :param channel: the aio-pika channel the task's queue is consumed on.
    :param queue: the task's aio-pika queue.
    :param tag: the consumer's tag (consuming already).
    :param limit: its prefetch (``max_held + batch_size``).
    :param batch_size: the task's.
    :param batch_timeout: the task's, in seconds (None: none).
    """

    def __init__(
        self,
        channel: Any,
        queue: Any,
        tag: str,
        limit: int,
        batch_size: int,
        batch_timeout: float | None,
    ) -> None:
        self.channel = channel
        self.queue = queue
        #: The consuming tag; None while the role is passed on.
        self.tag: str | None = tag
        self.limit = limit
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        #: The consumer's prefetch (``limit``, then its room when it resumed).
        self.window = limit
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
        if self.tag is not None and self._full(pending):
            tag, self.tag = self.tag, None
            forget([tag])
            self.retired.append(tag)
            self.moving = asyncio.ensure_future(self._cancel(tag))
            self.moving.add_done_callback(lambda _: self.after())
        elif self.tag is None and unsettled <= self.limit - self.batch_size:
            tag = self.tag = new_tag()
            self.window = self.limit - unsettled
            self.moving = asyncio.ensure_future(
                self._consume(consume, tag, self.window)
            )
            self.moving.add_done_callback(lambda _: self.after())

    def _full(self, pending: dict[int, str]) -> bool:
        """Whether the consumer holds its whole prefetch (nothing more comes)."""
        if len(pending) < self.window:
            return False
        tag = self.tag
        return sum(1 for consumer in pending.values() if consumer == tag) >= self.window

    async def _cancel(self, tag: str) -> None:
        try:
            await self.queue.cancel(tag, timeout=CANCEL_TIMEOUT)
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
            await consume(self.channel, self.queue, tag)
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


class Handovers:
    """Every batched task's ``Handover`` in this worker.

    :param limits: the task queues' live consumer tags -> prefetch
        (``AmqpBatches.limits``): a new tag is added, a retired one
        dropped once none of its deliveries is unsettled.
    :param pending: a channel's unsettled deliveries, tag -> consumer tag.
    :param untap: stops taking a channel's deliveries to these consumers
        (the transport's ``Channels.untap``: retired ones, once settled).
    """

    def __init__(
        self,
        limits: dict[str, int],
        pending: Callable[[Any], dict[int, str]],
        untap: Callable[[Any, list[str]], None] | None = None,
    ) -> None:
        self.limits = limits
        self._pending = pending
        self._untap = untap or (lambda channel, tags: None)
        #: Whether the worker stops (the transport's; it never consumes again).
        self.stopping: Callable[[], bool] = lambda: False
        self.each: list[Handover] = []
        self._consume: Consume | None = None
        self._forget: Forget | None = None

    async def add(self, handover: Handover, consume: Consume, forget: Forget) -> None:
        """Follow a task's consumer (started already).

        :param handover: it.
        :param consume: the transport's.
        :param forget: the transport's.
        """
        handover.underlay = await handover.channel.get_underlay_channel()
        self._consume, self._forget = consume, forget
        handover.after = self.check
        self.each.append(handover)

    def short(self, unread: "deque[Delivery]", limit: int, now: float) -> bool:
        """Whether the next read would start a batch short while more arrive.

        A consumer that has just become active (another worker passed the
        role on) receives its backlog over some milliseconds; its first
        deliveries are overdue (their ``batch_timeout`` counts from their
        send time), so a buffer holding them is due at once and would run
        with what one read brought. The transport waits a moment for a
        batch's worth (``burst``) when the oldest unread is
        such an overdue delivery of a task queue and fewer than a batch
        (or the read's ``limit``) are unread. Fresh deliveries (low rates)
        never wait: their buffer waits its timeout anyway.

        :param unread: the inbox's unread deliveries, oldest first.
        :param limit: the read's.
        :param now: the time (epoch seconds).
        :return: True to wait for more.
        """
        handle = unread[0].handle
        if handle is None:
            return False
        handover = self._by_channel(handle[0])
        if handover is None or handover.tag is None or handover.batch_timeout is None:
            return False  # a passed role brings nothing more until acks
        if len(unread) >= min(limit, handover.batch_size):
            return False
        sent_at = unread[0].sent_at
        return sent_at is not None and sent_at + handover.batch_timeout <= now

    async def burst(self, inbox: Inbox, limit: int) -> None:
        """Wait a moment while a task's overdue backlog is still arriving.

        ``short`` says when; each wait ends at the next delivery or after
        ``BURST_GAP`` seconds without one, all of them within ``BURST_MAX``
        seconds (the transport's ``read`` then takes what came).

        :param inbox: the transport's.
        :param limit: the read's.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + BURST_MAX
        while not self.stopping() and self.short(inbox.unread, limit, time.time()):
            left = end - loop.time()
            if left <= 0:
                return
            inbox.arrived.clear()
            try:
                await asyncio.wait_for(inbox.arrived.wait(), min(BURST_GAP, left))
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                return  # the burst ended short of a batch

    def _by_channel(self, channel: Any) -> Handover | None:
        for handover in self.each:
            if handover.underlay is channel:
                return handover
        return None

    def check(self) -> None:
        """Pass on or take again each task's role (``Handover.check``)."""
        consume, forget = self._consume, self._forget
        if consume is None or forget is None:
            return
        stopping = self.stopping()
        for handover in self.each:
            pending = self._pending(handover.underlay)
            before = handover.tag
            handover.check(pending, stopping, consume, forget)
            if handover.tag is not None and handover.tag != before:
                self._retire(handover, pending)

    def _retire(self, handover: Handover, pending: dict[int, str]) -> None:
        """A consumer again: forget the retired tags that hold nothing now."""
        live = set(pending.values())
        done = [tag for tag in handover.retired if tag not in live]
        for tag in done:
            self.limits.pop(tag, None)
        self._untap(handover.underlay, done)
        handover.retired = [tag for tag in handover.retired if tag in live]
        if handover.tag is not None:
            self.limits[handover.tag] = handover.limit

    async def settled(self) -> None:
        """Wait for every cancel or consume under way."""
        for handover in self.each:
            await handover.settled()
