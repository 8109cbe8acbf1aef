"""What a NATS lease's requests bring: messages into the round, and their ends.

``LeaseIntake`` is the receiving half of a ``nats_lease.LeaseReader``:
called as the client parses each message of the reader's inbox, it adds
a delivery to the round its holder assembles (``nats_lease_keys``),
hands keys full over to the worker's next take, and notes a request's
end (a status, or its last message). A message without headers (the
plugin's producer sends an unkeyed batched message with none) comes raw,
as parsed: no ``Msg`` built, no coroutine run (``nats_subscribe_direct``).
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease_end import AckedMemory
from taskiq_batching.transports.nats_lease_keys import KeyedRound
from taskiq_batching.transports.nats_pull import Unsettled
from taskiq_batching.transports.nats_reply import delivery_facts, message_sent_at

#: The headers of a message that has none.
NONE: Mapping[str, Any] = MappingProxyType({})


class LeaseIntake:
    """The messages a lease reader's requests bring, and their ends.

    :param client: the broker's NATS client.
    :param batch_size: the task's batch size.
    :param batch_timeout: the task's timeout (None: size only).
    :param wake: called when a round is ready to be taken.
    """

    def __init__(
        self,
        client: Any,
        batch_size: int,
        batch_timeout: float | None,
        wake: Callable[[], None],
    ) -> None:
        self.client = client
        self.wake = wake
        #: Received and not settled, by stream sequence.
        self.held: dict[int, Unsettled] = {}
        #: Acked last: delivered again (an ack lost), acked again, not run.
        self.acked = AckedMemory()
        self.reacked = 0
        #: Their reply subjects, acked again by the reader's loop.
        self.reacks: list[str] = []
        #: The round forming, per key: received, not handed to the worker.
        self.round = KeyedRound(batch_size, batch_timeout)
        #: Rounds full or due, for the worker's next ``take``.
        self.ready: deque[TakenBatch] = deque()
        #: The worker asked for a round (it has room): requests may go.
        self.wanted = False
        #: The reply subject of the last message (its pending count).
        self.last_reply = ""
        #: Messages the request in flight may still bring (0: none in flight).
        self.owed = 0
        #: Messages the request in flight brought, the last at ``last_at``.
        self.got = 0
        self.last_at = 0.0
        #: The serial of the request in flight (its reply subject's last token).
        self.serial = 0
        #: The status that ended the last request (``409``: refused).
        self.status: str | None = None
        #: A request of ours ended: the slot is let go unless we ask again.
        self.ended = False
        #: Set at each message, request's end or take: the reader's loop looks.
        self.poke = asyncio.Event()

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
        self.last_reply = reply
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

    def _hand_over(self, batches: list[TakenBatch]) -> None:
        """Keys full or due: ready for the worker's next take."""
        if not batches:
            return
        self.ready.extend(batches)
        if not self.round:  # the round ended: ask again when the worker takes
            self.wanted = False
        self.wake()
