"""RabbitMQ: every batched task's consumer in a worker (``amqp_handover.Handover``).

``Handovers`` checks each task's consumer after a read or an ack (pass
the role on, or consume again), keeps the transport's list of live
consumer tags, and makes a read wait a moment while a task's overdue
backlog is still arriving at a consumer that has just become active
(``short``, ``burst``).
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from taskiq_batching.transports.amqp_handover import Consume, Forget, Handover
from taskiq_batching.transports.amqp_inbox import Inbox
from taskiq_batching.transports.delivery import Delivery

#: Longest a read waits for a task's next overdue delivery (``burst``), in
#: seconds: RabbitMQ sends a new active consumer's backlog in one go.
BURST_GAP = 0.01
#: Longest a read waits in all for a batch's worth of them, in seconds.
BURST_MAX = 0.05


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

    def passed_on(self) -> list[str]:
        """The tasks whose role this worker passed on (``Handover.passed``).

        Nothing more of them comes here, so a partial buffer of one runs
        once it holds all the worker has of the task (``worker/pump.py``).

        :return: their names.
        """
        return [
            handover.task_name
            for handover in self.each
            if handover.behind and handover.passed(self._pending(handover.underlay))
        ]

    def _retire(self, handover: Handover, pending: dict[int, str]) -> None:
        """A consumer again: forget the retired tags that hold nothing now."""
        live = set(pending.values())
        done = [tag for tag in handover.retired if tag not in live]
        for tag in done:
            self.limits.pop(tag, None)
        self._untap(handover.underlay, done)
        handover.retired = [tag for tag in handover.retired if tag in live]
        if handover.tag is not None:
            self.limits[handover.tag] = handover.bound

    async def settled(self) -> None:
        """Wait for every cancel or consume under way."""
        for handover in self.each:
            await handover.settled()
