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
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from taskiq_batching._compat import nats_subscribe_direct
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease_end import AckedMemory, drain, end_request
from taskiq_batching.transports.nats_lease_keys import KeyedRound
from taskiq_batching.transports.nats_pull import Unsettled, log_reacked
from taskiq_batching.transports.nats_reply import delivery_facts, message_sent_at
from taskiq_batching.transports.nats_settle import ACK

logger = logging.getLogger("taskiq_batching")

#: The headers of a message that has none.
NONE: Mapping[str, Any] = MappingProxyType({})
#: Seconds a request waits while its round holds nothing (the idle cost).
IDLE_EXPIRES = 2.0
#: Extra seconds to wait for a request's end before giving up on it.
MARGIN = 1.0
#: A round past its deadline still takes what its request brings while
#: messages come closer together than this (seconds): a backlog's burst
#: fills it, instead of each of its messages, due on arrival, ending one.
BURST_SECONDS = 0.002


class LeaseReader:
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
        self.client = client
        self.api = api
        self.wake = wake
        self.free_subject = f"_tb.free.{durable}"
        #: Received and not settled, by stream sequence.
        self.held: dict[int, Unsettled] = {}
        #: Acked last: delivered again (an ack lost), acked again, not run.
        self.acked = AckedMemory()
        self.reacked = 0
        #: Their reply subjects, acked again by the loop.
        self.reacks: list[str] = []
        #: The round forming, per key: received, not handed to the worker.
        self.round = KeyedRound(batch_size, batch_timeout)
        #: Rounds full or due, for the worker's next ``take``.
        self.ready: deque[TakenBatch] = deque()
        #: The worker asked for a round (it has room): requests may go.
        self.wanted = False
        #: Messages the request in flight may still bring (0: none in flight).
        self.owed = 0
        self.ends_at = 0.0
        #: Messages the request in flight brought, the last at ``last_at``.
        self.got = 0
        self.last_at = 0.0
        self.serial = 0
        #: The status that ended the last request (``409``: refused).
        self.status: str | None = None
        #: A request of ours ended: the slot is let go unless we ask again.
        self.ended = False
        self.poke = asyncio.Event()
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
            with room).
        :return: the batches, oldest first.
        """
        if full_only:
            taken: list[TakenBatch] = []
            while self.ready and len(taken) < room and self.ready[0].reason == "size":
                taken.append(self.ready.popleft())
            return taken
        if not self.ready:
            self.ready.extend(self.round.want(needs or {}))
        taken = [self.ready.popleft() for _ in range(min(room, len(self.ready)))]
        if not taken:
            self.wanted = True
            self.poke.set()
        return taken

    async def _on_free(self, message: Any) -> None:
        self.free.set()

    def _on_message(self, message: Any) -> None:
        """A message with headers, or a request's end (as the client parses it)."""
        headers = message.headers or {}
        if "Status" in headers:
            if headers["Status"] != "100" and message.subject.endswith(
                f".{self.serial}"
            ):
                self.status = str(headers["Status"])
                self._request_ended()
            return
        self._take(message.reply, message.data, headers)

    def _take(
        self, reply: str | bytes, data: bytes, headers: Mapping[str, Any] = NONE
    ) -> None:
        """Add a message delivered to the round (unless held or acked already).

        Also the raw handle of a message without headers, as parsed: its
        reply subject as bytes, no ``Msg`` built (``nats_subscribe_direct``).
        """
        if isinstance(reply, bytes):
            reply = reply.decode()
        self.got += 1
        self.last_at = time.time()
        if self.owed:  # the request counts every delivery
            self.owed -= 1
            if not self.owed:
                self._request_ended()
        self.poke.set()
        sequence, _, sent_at = delivery_facts(reply)
        if sequence in self.acked:
            # Acked, yet delivered again: the ack was lost (a server
            # restart, whose consumer state may also have lost the
            # delivery count). It ran: acked again (by the loop), not run twice.
            self.reacked += 1
            self.reacks.append(reply)
            return
        held = self.held.get(sequence)
        if held is not None:
            # Delivered again while held (ack_wait passed): acked through
            # this delivery, not run twice.
            held.reply = reply
            return
        held = self.held[sequence] = Unsettled(reply, sequence)
        if headers:
            sent_at = message_sent_at(reply, headers)
        self._hand_over(self.round.add(Delivery(data, held, sent_at=sent_at), headers))

    def _request_ended(self) -> None:
        if not self.got:  # nothing came: the next round asks as for one key
            self.round.seen = 0
        self.owed = 0
        self.ended = self.status != "409"  # a refused one never held the slot
        self.poke.set()

    def owns(self, held: Any) -> bool:
        """Whether ``held`` is one of this reader's messages."""
        return isinstance(held, Unsettled) and self.held.get(held.sequence) is held

    def unhold(self, held: Unsettled, acked: bool = False) -> None:
        """Settled (acked, nak'ed or forgotten by the worker).

        :param held: the message.
        :param acked: it is acked (remembered: see ``_on_message``).
        """
        if self.held.get(held.sequence) is held:
            del self.held[held.sequence]
        if acked:
            self.acked.add(held.sequence)

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
        if self.reacked:
            log_reacked(self.reacked)
            self.reacked = 0
        if self.reacks:
            replies, self.reacks = self.reacks, []
            for reply in replies:
                await self.client.publish(reply, ACK)
        now = time.time()
        if self.round.is_due(now) and not self._arriving(now):
            self._hand_over(self.round.end())
        if self.owed and now >= self.ends_at:
            self._request_ended()  # no end came (a reconnection): ask again
        # A round with keys open keeps the slot until its deadline.
        asking = self.wanted or bool(self.round)
        if self.ended and not self.owed and not asking:
            self.ended = False
            await self.client.publish(self.free_subject, b"")
        if self.owed:
            await self._sleep(_sooner(self._until_due(now), self.ends_at - now))
        elif self.status == "409":
            self.status = None
            await self._wait_free(now)
        elif asking:
            await self._ask(now)
        else:
            await self._sleep(self._until_due(now))

    def _hand_over(self, batches: list[TakenBatch]) -> None:
        """Keys full or due: ready for the worker's next take."""
        if not batches:
            return
        self.ready.extend(batches)
        if not self.round:  # the round ended: ask again when the worker takes
            self.wanted = False
        self.wake()

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
        body = {"batch": self.owed, "expires": int(expires * 1e9)}
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
