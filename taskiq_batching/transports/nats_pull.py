"""A JetStream pull consumer read by one worker: its own inbox, one request at a time.

``Pull`` subscribes to an inbox of its own and publishes pull requests
(``{"batch": n, "expires": ...}``) to the consumer's ``MSG.NEXT`` subject
with that inbox as reply. Each message is handed over as the client
parses it (``_compat.nats_subscribe_direct``), appended to a list, and
one event set: no queue, timeout, future or task per message (as
``PullSubscription.fetch`` has). A request ends with its last
message, or with a status message (``408`` when it expired, ``409``...),
or is given up ``FETCH_TIMEOUT + GRACE`` seconds after it was sent (a lost
connection). Only one is in progress at a time, so its messages and its
end are never mistaken for another's.

Every message received and not yet acked or nak'ed is *held* (by stream
sequence): it counts against the consumer's ``max_ack_pending``, which no
request asks beyond. A message redelivered while held (``ack_wait``
passed) is not taken twice: the held one is acked through the newest
delivery.

Each delivery carries ``sent_at``: the time the stream stored the message
(in its ack subject, the server's clock), so a batch's deadline can count
from the send rather than from this worker's read.
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from taskiq_batching._compat import nats_pull_subject, nats_subscribe_direct
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_reply import SENT_AT as SENT_AT
from taskiq_batching.transports.nats_reply import delivery_facts
from taskiq_batching.transports.nats_reply import message_sent_at as message_sent_at
from taskiq_batching.transports.nats_reply import stream_sequence as stream_sequence
from taskiq_batching.transports.nats_reply import stream_timestamp as stream_timestamp
from taskiq_batching.transports.nats_settle import ACK

logger = logging.getLogger("taskiq_batching")

#: Most messages one request asks for.
FETCH_MAX = 100
#: Seconds a request lingers on an idle consumer before it expires.
FETCH_TIMEOUT = 1.0
#: Extra seconds to wait for a request's end (its status) before giving up on it.
GRACE = 1.0
#: Status code of an idle heartbeat (no request ends with it).
HEARTBEAT = "100"
#: Stream sequences of the messages acked last that a worker remembers.
ACKED_MEMORY = 65536
#: Seconds between two looks at the consumer's state after empty reads.
CONSUMER_CHECK_INTERVAL = 1.0


def log_reacked(count: int) -> None:
    """Say that messages this worker had acked came again and were acked again.

    :param count: how many.
    """
    logger.warning(
        "taskiq_batching: NATS delivered again %d message(s) this worker "
        "had acked (their acks were lost: a server restart?); acked "
        "again, not run twice",
        count,
    )


class Unsettled:
    """A message this worker received and has not acked or nak'ed yet.

    :param reply: the reply subject of its newest delivery (where acks go).
    :param sequence: its stream sequence.
    """

    __slots__ = ("handed", "reply", "sequence")

    def __init__(self, reply: str, sequence: int) -> None:
        self.reply = reply
        self.sequence = sequence
        #: Handed to taskiq's Receiver (not kept alive by the transport).
        self.handed = False


class Pull:
    """One worker's reading of a taskiq-nats pull consumer.

    :param client: the broker's NATS client.
    :param subscription: the broker's ``PullSubscription`` (its subject).
    :param prefetch: the consumer's ``max_ack_pending``, or None.
    """

    def __init__(self, client: Any, subscription: Any, prefetch: int | None) -> None:
        self.client = client
        self.subject = nats_pull_subject(subscription)
        self.prefetch = prefetch
        #: Every message received and not settled, by stream sequence.
        self.held: dict[int, Unsettled] = {}
        #: Received, not read yet.
        self.unread: deque[Delivery] = deque()
        #: Stream sequences this worker acked last (an ordered set).
        self.acked: dict[int, None] = {}
        #: Redeliveries of messages in ``acked`` acked again (not run).
        self.reacked = 0
        self._reacks: list[str] = []  # their reply subjects, to ack again
        #: Set when a message arrives, a request ends, or room frees up.
        self.arrived = asyncio.Event()
        #: Messages the request in progress may still bring (0: none is).
        self.requested = 0
        self.given_up_at = 0.0
        self.stopping = False
        self._checked_at = float("-inf")
        self._sub: Any = None
        self._inbox = ""

    async def start(self) -> None:
        """Subscribe to an inbox of its own."""
        self._inbox = self.client.new_inbox()
        self._sub = await nats_subscribe_direct(
            self.client, self._inbox, self._on_message, self._take
        )

    def _on_message(self, message: Any) -> None:
        """Note a message, or a request's end (called as the client parses it)."""
        headers = message.headers
        if headers and "Status" in headers:
            if headers["Status"] != HEARTBEAT:
                self.requested = 0  # expired, or refused: the request ended
                self.arrived.set()
            return
        self._take(message.reply, message.data, headers)

    def _take(self, reply: str | bytes, data: bytes, headers: Any = None) -> None:
        """Note a message delivered: held, to read (unless taken already).

        Also the raw handle of a message without headers, as parsed: its
        reply subject as bytes, no ``Msg`` built.
        """
        if isinstance(reply, bytes):
            reply = reply.decode()
        if self.requested > 0:
            self.requested -= 1
        sequence, delivered, sent_at = delivery_facts(reply)
        if delivered > 1 and sequence in self.acked:
            # Acked by this worker, yet delivered again: the ack was lost (a
            # server restart). It ran: acked again (by the reader), not run twice.
            self.reacked += 1
            self._reacks.append(reply)
            self.arrived.set()
            return
        held = self.held.get(sequence)
        if held is not None:
            # Redelivered while still held: acked through this delivery.
            held.reply = reply
            logger.warning(
                "taskiq_batching: NATS redelivered message %d while this "
                "worker held it (ack_wait passed); kept the held one",
                sequence,
            )
            return
        held = self.held[sequence] = Unsettled(reply, sequence)
        if headers:
            sent_at = message_sent_at(reply, headers)
        unread = self.unread
        # Set once per run of arrivals: while ``unread`` is not empty the
        # event is set already (it is cleared only with ``unread`` empty),
        # except while ``stop`` waits for the request's end.
        if not unread or not self.requested:
            self.arrived.set()
        unread.append(Delivery(data, held, sent_at=sent_at))

    def take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` messages received and not read yet."""
        unread = self.unread
        if limit >= len(unread):  # the usual case: all of it, at once
            chunk = list(unread)
            unread.clear()
            return chunk
        return [unread.popleft() for _ in range(limit)]

    def back(self, deliveries: Sequence[Delivery]) -> None:
        """Read these again, first (still held)."""
        if deliveries:
            self.unread.extendleft(reversed(deliveries))
            self.arrived.set()

    async def request(self, limit: int) -> None:
        """Ask for up to ``limit`` messages, unless a request is in progress."""
        if self._reacks:
            await self._ack_reacks()
        loop = asyncio.get_running_loop()
        if self.requested and loop.time() >= self.given_up_at:
            self.requested = 0  # no end came (a reconnection): ask again
        if self.requested or self.stopping:
            return
        batch = min(limit, FETCH_MAX)
        if self.prefetch is not None:
            batch = min(batch, self.prefetch - len(self.held))
        if batch <= 0:
            return  # max_ack_pending is reached: a settle wakes the reader
        self.requested = batch
        self.given_up_at = loop.time() + FETCH_TIMEOUT + GRACE
        request = {"batch": batch, "expires": int(FETCH_TIMEOUT * 1e9)}
        await self.client.publish(
            self.subject, json.dumps(request).encode(), reply=self._inbox
        )

    async def _ack_reacks(self) -> None:
        replies, self._reacks = self._reacks, []
        for reply in replies:
            await self.client.publish(reply, ACK)

    async def wait(self) -> None:
        """Wait for a message, a request's end or room; at most until given up."""
        left = self.given_up_at - asyncio.get_running_loop().time()
        if not self.requested:
            left = GRACE
        # asyncio's TimeoutError: not the builtin before Python 3.11.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), max(left, 0.01))

    async def consumer_full(self, subscription: Any) -> bool:
        """Whether the consumer is at ``max_ack_pending``, all processes together.

        Asked when a read got nothing while this process holds messages:
        one request, at most every ``CONSUMER_CHECK_INTERVAL`` s.

        :param subscription: the broker's ``PullSubscription``.
        :return: False too when it cannot tell (asked too recently, or the
            request failed: the next empty read asks again).
        """
        loop = asyncio.get_running_loop()
        if (
            self.prefetch is None
            or self.stopping
            or loop.time() < self._checked_at + CONSUMER_CHECK_INTERVAL
        ):
            return False
        self._checked_at = loop.time()
        try:
            info = await asyncio.wait_for(
                subscription.consumer_info(), CONSUMER_CHECK_INTERVAL
            )
        except Exception as exc:
            logger.debug("taskiq_batching: NATS consumer_info failed: %s", exc)
            return False
        limit = info.config.max_ack_pending or self.prefetch
        return (info.num_ack_pending or 0) >= limit

    def settled(self, handles: Sequence[Unsettled], acked: bool) -> None:
        """No longer held (``unhold``); if acked, remembered (see ``_take``).

        :param handles: messages acked or nak'ed.
        :param acked: whether they were acked.
        """
        held = self.held
        remembered = self.acked
        freed = False
        for one in handles:
            sequence = one.sequence
            if held.get(sequence) is one:
                del held[sequence]
                freed = True
            if acked:
                remembered[sequence] = None
        while len(remembered) > ACKED_MEMORY:
            del remembered[next(iter(remembered))]
        if freed and not self.requested:
            self.arrived.set()

    def unhold(self, held: Unsettled) -> None:
        """No longer held (settled or forgotten); wakes a reader short of room."""
        if self.held.get(held.sequence) is held:
            del self.held[held.sequence]
            if not self.requested:
                self.arrived.set()

    async def stop(self) -> list[Delivery]:
        """Let the request in progress end; unsubscribe.

        :return: what was received and never read (to nak).
        """
        self.stopping = True
        if self._sub is None:
            return []
        loop = asyncio.get_running_loop()
        while self.requested and loop.time() < self.given_up_at:
            # Its messages would reach no subscriber once it is gone.
            self.arrived.clear()
            await self.wait()
        unread = list(self.unread)
        self.unread.clear()
        await self._ack_reacks()
        await self._sub.unsubscribe()
        return unread
