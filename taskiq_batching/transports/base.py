"""What the worker needs from a broker and a result backend, as two Protocols.

A ``Transport`` is a broker's I/O as a batching worker uses it: reading
deliveries in chunks (each with the handle its ack needs), acking many,
giving unprocessed ones back, claiming a dead consumer's, sending many.
A ``ResultWriter`` stores many results. ``transports/__init__.py`` picks
the implementation for a broker or a backend, in one place; the generic
ones work for any taskiq broker and backend.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq import AckableMessage, BrokerMessage, TaskiqResult

from taskiq_batching.spec import BatchSpec

#: The label (an AMQP header on the wire) in which the plugin's producer
#: puts a batched message's send time, epoch seconds, for a transport whose
#: broker keeps no send time of its own (``stamps_sent_at``).
SENT_AT_LABEL = "batch_sent_at"


@dataclass(slots=True)
class Delivery:
    """One message as a transport read it.

    :param data: the message's bytes.
    :param handle: what acking or releasing it takes (a stream entry, an
        AMQP delivery tag, an ack callable...); None when it has no ack.
    :param original: what the broker's own listener yielded, handed to
        taskiq's Receiver as it is (generic transport only).
    :param sent_at: when the message was sent (epoch seconds, the broker's or
        producer's clock), if known: a buffer's batch_timeout counts from its
        first message's sent_at (else from when it was read).
    """

    data: bytes
    handle: Any = None
    original: bytes | AckableMessage | None = None
    sent_at: float | None = None


class Transport(Protocol):
    """A broker's I/O for a batching worker (and ``kiq_many``).

    ``read`` is only called while taskiq's Receiver waits for a delivery,
    so a transport never takes messages the Receiver could not take.
    """

    #: The transport's name in logs (``redis-stream``, ``generic`` ...).
    name: str
    #: Whether deliveries must be acked (False: the broker forgets a message
    #: once it is delivered, so deliveries read but not used are lost
    #: unless ``release`` gives them back).
    acknowledges: bool
    #: Unacked deliveries the broker gives this consumer at most, shared by
    #: every task (AMQP prefetch, NATS max_ack_pending), or None if unbounded.
    prefetch: int | None
    #: Seconds between two ``reclaim`` calls, or None when it has none.
    reclaim_interval: float | None

    @property
    def outstanding(self) -> int:
        """Deliveries read and neither acked nor released (held against prefetch)."""

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Warn, at worker start, about settings of the broker these tasks defeat.

        :param specs: the worker's batched tasks.
        """

    async def read(self, limit: int) -> list[Delivery]:
        """Wait for the next deliveries, at most ``limit`` of them.

        :param limit: the most deliveries to take (>= 1).
        :raises StopAsyncIteration: when the broker's listener ended.
        :return: deliveries in broker order; none when the broker stayed
            idle for a while (the worker then checks its timers and reads
            again).
        """

    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        """Stop a ``read`` in progress because the worker stops.

        A read that may already have taken messages from the broker must
        not lose them: it is waited for, or cancelled only when the
        broker's listener hands over what it took (taskiq's contract).

        :param reading: the future of the read in progress.
        :raises Exception: what the broker's listener raised while stopping.
        :return: what the read still returned.
        """

    async def reclaim(self) -> list[Delivery]:
        """Take over deliveries a dead consumer left unacked.

        :return: them, now this consumer's.
        """

    async def ack(self, handles: Sequence[Any]) -> None:
        """Acknowledge deliveries, in as few round trips as the broker allows.

        :param handles: their handles.
        """

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries read but not processed back to the broker.

        :param deliveries: they were neither finished nor acked.
        """

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """Stop tracking deliveries the worker will neither ack nor release.

        A message whose middleware failed is left unacked, as taskiq leaves
        it: the broker's own redelivery (an idle entry's claim, an ack wait)
        must then apply to it.

        :param deliveries: they stay unacked.
        """

    async def close(self) -> None:
        """Stop reading for good.

        :raises Exception: what the broker's listener raised while closing.
        """

    def for_receiver(self, delivery: Delivery) -> bytes | AckableMessage:
        """The delivery as taskiq's Receiver takes it from ``broker.listen()``.

        :param delivery: a delivery of a task the worker does not batch.
        :return: what the broker's own listener would have yielded.
        """

    async def send(self, messages: Sequence[BrokerMessage]) -> None:
        """Send messages as ``broker.kick`` would, in few round trips.

        :param messages: formatted messages, in order.
        """


class ResultWriter(Protocol):
    """A result backend's writes for a batching worker."""

    async def write(
        self, results: Sequence[tuple[str, TaskiqResult[Any]]]
    ) -> list[tuple[int, BaseException]]:
        """Store each result under its task_id, as ``set_result`` would.

        :param results: ``(task_id, result)`` pairs; equal result objects
            may be passed for many task_ids (then written once, if possible).
        :return: ``(index, error)`` of each result that could not be stored.
        """


def finished_read(reading: "asyncio.Future[list[Delivery]]") -> list[Delivery]:
    """What an ended read gave: its deliveries, none, or the error it raised.

    :param reading: a read that is done (cancelled, ended or failed).
    :raises Exception: what the broker's listener raised.
    :return: the deliveries; none if it was cancelled or the listener ended.
    """
    if reading.cancelled():
        return []
    error = reading.exception()
    if isinstance(error, StopAsyncIteration):
        return []
    if error is not None:
        raise error
    return reading.result()
