"""Waiting in the broker on NATS JetStream: a lease per batched task (issue 18).

With ``NatsTransport(wait_in_broker=True)`` a batched task's messages wait
on a subject of their own (``<subject>.batch.<token>``, stream
``<stream>-batch``), read by a durable of their own whose
``max_waiting=1`` makes the server keep ONE pull request waiting: the
process whose request waits assembles the task's next batch, and every
other request gets 409. The holder asks for what completes its round
(``batch_size`` minus what it took since it won the slot), expiring at the
round's deadline: its first message's send time + ``batch_timeout`` -
``SLACK``. A request therefore ends when the batch is full or due; then the
holder lets the slot go, says so on a core subject (``_tb.free.<durable>``)
so the others ask at once, and asks again only once its round is settled
(its batch ran). A holder that died never says so: the others ask again
after ``IDLE_EXPIRES``. The worker sees ordinary deliveries and buffers
them as today. Measured in docs/fleet.md ("NATS JetStream").

Messages reach the task's subject through the worker: a batched message
read on the main consumer is published there with ``Nats-Msg-Id`` = its
stream sequence (a second forward after a crash is dropped by the
server's duplicate window) and its send time in ``Tb-Sent-At``, then acked.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.transports.base import Delivery
from taskiq_batching.transports.nats_pull import (
    Unsettled,
    message_sent_at,
    stream_sequence,
)

logger = logging.getLogger("taskiq_batching")

#: Seconds a request waits while its round holds nothing (the idle cost).
IDLE_EXPIRES = 2.0
#: Seconds before its deadline a round's request expires.
SLACK = 0.005
#: Extra seconds to wait for a request's end before giving up on it.
MARGIN = 1.0


def task_token(task_name: str) -> str:
    """A subject token and durable suffix for a task name (any characters)."""
    return hashlib.sha1(task_name.encode()).hexdigest()[:16]


class LeaseReader:
    """One batched task's durable with ``max_waiting=1``, read under its lease.

    :param client: the broker's NATS client.
    :param api: the consumer's ``MSG.NEXT`` subject.
    :param durable: the durable's name.
    :param batch_size: the task's batch size.
    :param batch_timeout: the task's timeout (None: size only).
    :param sink: called with each delivery received.
    """

    def __init__(
        self,
        client: Any,
        api: str,
        durable: str,
        batch_size: int,
        batch_timeout: float | None,
        sink: Callable[[Delivery], None],
    ) -> None:
        self.client = client
        self.api = api
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.sink = sink
        self.free_subject = f"_tb.free.{durable}"
        #: Received and not settled, by stream sequence.
        self.held: dict[int, Unsettled] = {}
        #: Messages taken since this process won the slot.
        self.round: list[Unsettled] = []
        self.due: float | None = None
        self.owed = 0
        self.serial = 0
        #: The status that ended the last request (``409``: refused).
        self.status: str | None = None
        self.ended = asyncio.Event()
        self.free = asyncio.Event()
        self.settled = asyncio.Event()
        self._inbox = ""
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe; start taking the slot."""
        self._inbox = self.client.new_inbox()
        self._subs = [
            await self.client.subscribe(f"{self._inbox}.*", cb=self._on_message),
            await self.client.subscribe(self.free_subject, cb=self._on_free),
        ]
        self._task = asyncio.ensure_future(self._loop())

    async def _on_free(self, message: Any) -> None:
        self.free.set()

    async def _on_message(self, message: Any) -> None:
        headers = message.headers or {}
        if "Status" in headers:
            if headers["Status"] != "100" and message.subject.endswith(
                f".{self.serial}"
            ):
                self.status = str(headers["Status"])
                self.owed = 0
                self.ended.set()
            return
        sequence, _ = stream_sequence(message.reply)
        held = self.held.get(sequence)
        if held is not None:
            # Delivered again while held (ack_wait passed): acked through
            # this delivery, not run twice.
            held.reply = message.reply
            return
        held = self.held[sequence] = Unsettled(message.reply, sequence)
        delivery = Delivery(message.data, held, sent_at=_sent_at(message, headers))
        if not self.round and self.batch_timeout is not None and delivery.sent_at:
            self.due = delivery.sent_at + self.batch_timeout - SLACK
        self.round.append(held)
        self.owed = max(0, self.owed - 1)
        if not self.owed:
            self.ended.set()
        self.sink(delivery)

    def owns(self, held: Any) -> bool:
        """Whether ``held`` is one of this reader's messages."""
        return isinstance(held, Unsettled) and self.held.get(held.sequence) is held

    def unhold(self, held: Unsettled) -> None:
        """Settled: once the whole round is, the next request may go."""
        if self.held.get(held.sequence) is held:
            del self.held[held.sequence]
            if not any(one.sequence in self.held for one in self.round):
                self.settled.set()

    async def _ask(self) -> float:
        """Send the round's next request; its expiry in seconds (0: none sent)."""
        expires = IDLE_EXPIRES
        if self.round and self.due is not None:
            expires = self.due - time.time()
        if expires <= 0.001:
            return 0.0
        self.serial += 1
        self.owed = self.batch_size - len(self.round)
        self.status = None
        self.ended.clear()
        self.free.clear()
        body = {"batch": self.owed, "expires": int(expires * 1e9)}
        await self.client.publish(
            self.api, json.dumps(body).encode(), reply=f"{self._inbox}.{self.serial}"
        )
        return expires

    def _complete(self) -> bool:
        """Whether the round is a batch: full, or its deadline passed."""
        if len(self.round) >= self.batch_size:
            return True
        return bool(self.round) and self.due is not None and self.due <= time.time()

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except Exception as exc:  # a lost connection: ask again later
                logger.warning(
                    "taskiq_batching: NATS lease request failed: %s", describe(exc)
                )
                await asyncio.sleep(MARGIN)

    async def _step(self) -> None:
        """One request of the round, or the hand-off of a finished round."""
        if self._complete():
            await self._hand_off()
            return
        expires = await self._ask()
        if not expires:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ended.wait(), expires + MARGIN)
        if not self.ended.is_set():
            self.owed = 0  # no end came (a reconnection): ask again
        if self.status == "409":
            await self._wait_free()

    async def _hand_off(self) -> None:
        """Let the slot go, say so, wait until the round is settled."""
        self.settled.clear()
        await self.client.publish(self.free_subject, b"")
        if any(one.sequence in self.held for one in self.round):
            await self.settled.wait()
        self.round = []
        self.due = None

    async def _wait_free(self) -> None:
        """Refused: wait for the holder's word, the idle wait, or our due."""
        wait = IDLE_EXPIRES
        if self.round and self.due is not None:
            wait = min(wait, max(0.0, self.due - time.time()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.free.wait(), wait)

    async def stop(self) -> None:
        """Stop asking; let the slot go; unsubscribe."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.client.publish(self.free_subject, b"")
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _sent_at(message: Any, headers: Any) -> float | None:
    """A message's send time: the moved one's ``Tb-Sent-At``, else its stream's."""
    return message_sent_at(message.reply, headers)
