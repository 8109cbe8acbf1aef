"""A worker's moves: the NATS ``Forwarder`` (``wait_in_broker``).

``Moves`` is the transport's ``forwarder``: it moves batched messages a
plain taskiq kicker put on the main subject to their task's subject (a
producer with the plugin publishes there itself, ``nats_send.py``), with
``Nats-Msg-Id`` = the original's stream sequence (the duplicate window
drops a second move), its send time (``Tb-Sent-At``), key (``Tb-Key``)
and ``batch_deadline`` as headers, and acks the original once the stream
stored the move, without holding up the reads (``nats_move.py``). The
batch source is ``nats_leases.Leases``.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq_batching.core.broker_keys import deadline_ms
from taskiq_batching.error_texts import describe
from taskiq_batching.labels import BATCH_DEADLINE_LABEL
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease_keys import KEY_HEADER
from taskiq_batching.transports.nats_move import MOVE_TIMEOUT, Move, Moved, Mover
from taskiq_batching.transports.nats_pull import SENT_AT, Unsettled
from taskiq_batching.transports.nats_send import (
    batch_subject,
)

logger = logging.getLogger("taskiq_batching")

Settle = Callable[[Sequence[Unsettled]], Awaitable[None]]


class Moves:
    """Moves the main consumer's batched messages to their task's subject.

    ``forward`` publishes and returns (``nats_move.Mover``): the pump reads
    on while the stream stores them. Once a chunk is answered, the
    originals of the stored messages are acked; a message the stream
    refused comes back to this worker as read again, and ``waited`` tells
    the worker to batch it itself (as when it cannot forward); one not
    answered in time is nak'ed: moved again by whoever reads it, the
    duplicate window dropping a second copy.

    :param broker: taskiq-nats's ``PullBasedJetStreamBroker``.
    :param ack: acks originals.
    :param nak: naks originals (delivered again at once).
    :param back: puts deliveries back among what this worker reads next.
    """

    def __init__(
        self,
        broker: Any,
        ack: Settle,
        nak: Callable[[Sequence[Delivery]], Awaitable[None]],
        back: Callable[[Sequence[Delivery]], None],
    ) -> None:
        self.broker = broker
        self._ack = ack
        self._nak = nak
        self._back = back
        #: Publishes the moves (made at the first: the client connects later).
        self.mover: Mover | None = None
        #: Seconds a chunk of moves waits for the stream's answers.
        self.timeout_seconds = MOVE_TIMEOUT
        #: Originals whose move the stream refused, back among the reads.
        self.refused: set[Unsettled] = set()

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        """Publish each message to its task's subject; return before it is stored.

        :param deliveries: ``(delivery, its task, its key)`` as read.
        """
        if not deliveries:
            return
        if self.mover is None:
            self.mover = Mover(self.broker.client, self._moved, self.timeout_seconds)
        await self.mover.publish(
            [self._move(spec.task_name, d, key) for d, spec, key in deliveries]
        )

    def waited(self, delivery: Delivery) -> bool:
        """Whether a delivery is one whose move was refused: the worker batches it.

        :param delivery: a delivery read on the main subject.
        :return: True once for each such delivery.
        """
        if delivery.handle in self.refused:
            self.refused.discard(delivery.handle)
            return True
        return False

    async def _moved(self, chunk: Moved) -> None:
        """Settle the originals of an answered chunk (never raises)."""
        if chunk.refused or chunk.unknown:
            logger.warning(
                "taskiq_batching: cannot move %d NATS message(s) to their batched "
                "task's subject (%s); %d refused: this worker batches them; %d "
                "unanswered: handed back (nak), moved again by the next reader",
                len(chunk.refused) + len(chunk.unknown),
                chunk.why,
                len(chunk.refused),
                len(chunk.unknown),
            )
            self.refused.update(delivery.handle for delivery in chunk.refused)
            self._back(chunk.refused)
        await self._settle(chunk.unknown, self._nak, "nak")
        handles = [delivery.handle for delivery in chunk.stored]
        await self._settle(handles, self._ack, "ack")

    async def _settle(self, items: Sequence[Any], settle: Any, verdict: str) -> None:
        if not items:
            return
        try:
            await settle(items)
        except Exception as exc:
            # The originals come back after ack_wait; a second move of a
            # stored one is dropped by the duplicate window (2 min by default).
            logger.warning(
                "taskiq_batching: cannot %s %d NATS message(s) after moving them "
                "to their batched task's subject: %s",
                verdict,
                len(items),
                describe(exc),
            )

    def _move(self, name: str, delivery: Delivery, key: str) -> Move:
        handle: Unsettled = delivery.handle
        headers = {
            "Nats-Msg-Id": f"{self.broker.stream_name}-{handle.sequence}",
            KEY_HEADER: key,  # the lease keeps each key's messages apart
        }
        if delivery.sent_at is not None:
            headers[SENT_AT] = repr(delivery.sent_at)
        deadline = self._deadline(delivery.data)
        if deadline is not None:
            headers[BATCH_DEADLINE_LABEL] = repr(deadline / 1000)
        return delivery, batch_subject(self.broker, name), delivery.data, headers

    def _deadline(self, data: bytes) -> int | None:
        """A message's ``batch_deadline`` (UNIX ms), read only when it may have one."""
        if BATCH_DEADLINE_LABEL.encode() not in data:
            return None
        try:
            labels = self.broker.formatter.loads(data).labels
        except Exception:  # the worker that takes it says why
            return None
        return deadline_ms(labels)

    async def stop(self) -> None:
        """Wait for the moves in flight to be answered and settled."""
        if self.mover is not None:
            await self.mover.stop()
