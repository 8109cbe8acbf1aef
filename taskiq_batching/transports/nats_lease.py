"""Waiting in the broker on NATS JetStream: a lease per batched task (issue 18).

With ``NatsTransport(wait_in_broker=True)`` a batched task's messages wait
on a subject of their own (``<subject>.batch.<token>``, stream
``<stream>-batch``), read by a durable whose ``max_waiting=1`` makes the
server keep ONE pull request waiting: the process whose request waits
assembles the task's next *round*, every other request gets 409. The
holder asks while its worker wants a batch (its ``take`` found none
ready) or its round has keys open, for what completes the round
(``nats_lease_keys``: each key full at ``batch_size`` or what the worker's
short remainder of it lacks), expiring at the round's deadline: its first
send + ``batch_timeout`` - ``SLACK``, or an earlier ``batch_deadline``. A
key full, or every key open at the deadline, is handed to the worker's
next take as a ``TakenBatch``, whose messages go through the one
lifecycle. When a request ends and the holder does not ask again at once,
it says the slot is free on a core subject (``_tb.free.<durable>``); a
dead holder never says so: the others ask again after ``IDLE_EXPIRES``.
While the worker's slots all run, it asks for nothing, but for a
backlog's next full round, taking only what is there (``_read_ahead``).
What the requests bring is received by ``nats_lease_intake.LeaseIntake``.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from taskiq_batching._compat import nats_subscribe_direct
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease_end import drain, end_request
from taskiq_batching.transports.nats_lease_intake import LeaseIntake
from taskiq_batching.transports.nats_pull import log_reacked
from taskiq_batching.transports.nats_reply import stream_pending
from taskiq_batching.transports.nats_settle import ACK

logger = logging.getLogger("taskiq_batching")

#: Seconds a request waits while its round holds nothing (the idle cost).
IDLE_EXPIRES = 2.0
#: Extra seconds to wait for a request's end before giving up on it.
MARGIN = 1.0
#: A round past its deadline still takes what its request brings while
#: messages come closer together than this (seconds): a backlog's burst
#: fills it, instead of each of its messages, due on arrival, ending one.
BURST_SECONDS = 0.002


class LeaseReader(LeaseIntake):
    """One batched task's durable with ``max_waiting=1``, read under its lease.

    :param client: the broker's NATS client.
    :param api: the consumer's ``MSG.NEXT`` subject.
    :param durable: the durable's name.
    :param batch_size: the task's batch size.
    :param batch_timeout: the task's timeout (None: size only).
    :param wake: called when a round is ready to be taken.
    """

    def __init__(
        self,
        client: Any,
        api: str,
        durable: str,
        batch_size: int,
        batch_timeout: float | None,
        wake: Callable[[], None],
    ) -> None:
        super().__init__(client, batch_size, batch_timeout, wake)
        self.api = api
        self.free_subject = f"_tb.free.{durable}"
        #: A backlog's next round is asked for ahead (``_read_ahead``), and
        #: the request in flight is such (``no_wait``).
        self.ahead = False
        self.asked_ahead = False
        self.ends_at = 0.0
        self.free = asyncio.Event()
        self._inbox = ""
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe; serve the worker's takes."""
        self._inbox = self.client.new_inbox()
        self._subs = [
            await nats_subscribe_direct(
                self.client, f"{self._inbox}.*", self._on_message, self._take
            ),
            await self.client.subscribe(self.free_subject, cb=self._on_free),
        ]
        self._task = asyncio.ensure_future(self._loop())

    def take(
        self,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
    ) -> list[TakenBatch]:
        """Up to ``room`` batches ready; with none, ask the server for a round.

        :param room: batches the worker may start now (>= 1).
        :param needs: what the worker's short remainders lack, by key: such
            a key is full at that many (else at ``batch_size``).
        :param full_only: only ready batches that filled (``size``), oldest
            first; no round is asked for (the slot stays free for a worker
            with room), but a backlog's next full one (``_read_ahead``).
        :return: the batches, oldest first.
        """
        if full_only:
            taken: list[TakenBatch] = []
            while self.ready and len(taken) < room and self.ready[0].reason == "size":
                taken.append(self.ready.popleft())
            if not taken:
                self._read_ahead()
            return taken
        if not self.ready:
            self.ready.extend(self.round.want(needs or {}))
        taken = [self.ready.popleft() for _ in range(min(room, len(self.ready)))]
        if not taken:
            self.wanted = True
            self.poke.set()
        return taken

    def _read_ahead(self) -> None:
        """A backlog: ask for its next full round while the worker's slots run.

        Only when the last message said the consumer had a full round more
        to deliver (its ack subject's pending count), for one key, and with
        nothing held, ready or asked. The request takes only what is there
        (``no_wait``): it never holds the slot waiting for messages, and
        another process's request waiting there refuses it (409). Without
        it, a worker draining a backlog alone asks for its next round only
        once its batch ended: a round trip per batch, idle.
        """
        round_ = self.round
        if self.ready or round_ or self.owed or round_.seen > 1:
            return
        if stream_pending(self.last_reply) >= round_.batch_size:
            self.ahead = True
            self.poke.set()

    async def _on_free(self, message: Any) -> None:
        self.free.set()

    async def _loop(self) -> None:
        # Until stopped: Python 3.11's wait_for may swallow the cancellation.
        while self._task is not None:
            try:
                await self._step()
            except Exception as exc:  # a lost connection: ask again later
                logger.warning(
                    "taskiq_batching: NATS lease request failed: %s", describe(exc)
                )
                self.owed = 0
                await asyncio.sleep(MARGIN)

    async def _step(self) -> None:
        """Hand over a round due; let the slot go; wait, or ask."""
        self.poke.clear()
        if self.reacks:
            await self._ack_again()
        now = time.time()
        if self.round.is_due(now) and not self._arriving(now):
            self._hand_over(self.round.end())
        if self.owed and now >= self.ends_at:
            self._request_ended()  # no end came (a reconnection): ask again
        # A round with keys open keeps the slot until its deadline.
        asking = self.wanted or self.ahead or bool(self.round)
        if self.ended and not self.owed and not asking:
            self.ended = False
            await self.client.publish(self.free_subject, b"")
        if self.owed:
            await self._sleep(_sooner(self._until_due(now), self.ends_at - now))
        elif self.status == "409":
            await self._refused(now)
        elif asking:
            await self._ask(now)
        else:
            await self._sleep(self._until_due(now))

    async def _ack_again(self) -> None:
        """Ack again what was acked and delivered again (``_take``)."""
        log_reacked(self.reacked)
        self.reacked = 0
        replies, self.reacks = self.reacks, []
        for reply in replies:
            await self.client.publish(reply, ACK)

    async def _refused(self, now: float) -> None:
        """A request refused: another process's waits (it holds the slot)."""
        self.status = None
        if self.asked_ahead:  # the worker wants nothing yet: no wait for a word
            self.asked_ahead = False
            return
        await self._wait_free(now)

    def _arriving(self, now: float) -> bool:
        """Whether the request in flight is bringing messages in a burst."""
        return bool(self.owed) and now - self.last_at < BURST_SECONDS

    def _until_due(self, now: float) -> float | None:
        if not self.round or self.round.due is None:
            return None
        left = self.round.due - now
        if left <= 0 and self._arriving(now):
            return BURST_SECONDS - (now - self.last_at)
        return max(left, 0.0)

    async def _sleep(self, seconds: float | None) -> None:
        """Until poked (a message, a request's end, a take) or ``seconds``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.poke.wait(), seconds)

    async def _ask(self, now: float) -> None:
        """Send the round's next request, expiring at the round's deadline."""
        expires = self.round.expires(now, IDLE_EXPIRES)
        if expires <= 0.001:
            await self._sleep(max(expires, 0.0))  # due: handed over next
            return
        owed = self.round.owed(sum(len(b.deliveries) for b in self.ready))
        if owed <= 0:  # it holds all it may: the round ends early
            self._hand_over(self.round.end())
            return
        self.serial += 1
        self.got = 0
        self.owed = owed
        self.ends_at = now + expires + MARGIN
        self.status = None
        self.ended = False
        self.free.clear()
        body: dict[str, Any] = {"batch": self.owed, "expires": int(expires * 1e9)}
        self.asked_ahead = self.ahead and not self.wanted
        self.ahead = False
        if self.asked_ahead:  # only what is there: it ends at once
            body = {"batch": self.owed, "no_wait": True}
        await self.client.publish(
            self.api, json.dumps(body).encode(), reply=f"{self._inbox}.{self.serial}"
        )

    async def _wait_free(self, now: float) -> None:
        """Refused: wait for the holder's word, the idle wait, or our due."""
        wait = _sooner(IDLE_EXPIRES, self._until_due(now))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.free.wait(), wait)

    async def stop(self) -> list[Delivery]:
        """Stop asking; let the slot go; unsubscribe.

        :return: what was received and never handed to the worker (to nak).
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.client.publish(self.free_subject, b"")
        for sub in self._subs:
            await drain(sub)  # what is on its way is received, handed back
        if self.owed:
            await end_request(self.client, self.api, MARGIN)
        left = [d for batch in self.ready for d in batch.deliveries]
        left += self.round.held()
        self.ready.clear()
        self.round.keys.clear()
        return left


def _sooner(first: float | None, second: float | None) -> float | None:
    """The shorter of two waits (None: no bound)."""
    if first is None:
        return second
    return first if second is None else min(first, second)
