"""What the worker needs from a broker and a result backend, as two Protocols.

A ``Transport`` is a broker's I/O as a batching worker uses it: reading
deliveries in chunks (each with the handle its ack needs), acking many,
giving unprocessed ones back, claiming a dead consumer's. Sending is the
producer's side, apart (``sender.Sender``).
A ``ResultWriter`` stores many results. ``transports/__init__.py`` picks
the implementation for a broker or a backend, in one place; the generic
ones work for any taskiq broker and backend.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from taskiq import AckableMessage, BrokerMessage, TaskiqResult

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import BatchSource
from taskiq_batching.transports.delivery import Delivery


class Transport(Protocol):
    """A broker's reading side, as a batching worker uses it.

    Sending is apart: ``sender.Sender`` (the producer's ``kiq_many``);
    the worker gives back through ``requeue`` and forwards through the
    ``forwarder``, never through a ``Sender``.

    ``read`` is only called while taskiq's Receiver waits for a delivery,
    so a transport never takes messages the Receiver could not take.

    Every transport of this package subclasses ``consumer.Consumer``,
    which defaults the members most brokers need no code for.

    One member is optional: ``requeue`` (a ``Requeue``; absent means None,
    see ``requeuer``), which gives read messages back to the tail of their
    queue, so a worker reads on past a backlog it cannot take yet.
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
    #: Where batched tasks' messages wait in the broker, taken as whole
    #: batches; None when the worker reads and buffers them.
    batches: BatchSource | None

    @property
    def outstanding(self) -> int:
        """Deliveries read and neither acked nor released (held against prefetch)."""

    def passed_on(self) -> Sequence[str]:
        """Batched tasks of which nothing more comes to this worker for now.

        RabbitMQ with ``wait_in_broker``: the worker passed the task's
        queue's active role on (``amqp_handover.py``). A partial buffer of
        such a task cannot grow: it runs once the worker holds nothing else
        of the task (``FlushRules.relieve``). None on other brokers.

        :return: their names.
        """

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

    async def stop_consuming(self) -> None:
        """Stop the broker delivering to this worker: it starts to stop.

        Called before the worker finishes what it holds, so that what comes
        next goes to other workers at once (a no-op where the worker pulls).
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


#: ``requeue(given)``: send each delivery's message again, to the tail of
#: the queue it was read from, with its task_id, labels and send time, then
#: ack it (atomically where the broker allows; else the re-send first: a
#: failure in between sends it twice, never loses it). ``given`` pairs each
#: delivery with its message as ``kick`` takes it. Returns the deliveries
#: it could not give back (their re-send failed; they are not acked).
Requeue = Callable[
    [Sequence[tuple[Delivery, BrokerMessage]]], Awaitable[Sequence[Delivery]]
]


def requeuer(transport: object) -> Requeue | None:
    """A transport's ``requeue``, its optional member (None when it has none).

    :param transport: any transport.
    :return: its ``requeue``, or None (then what a worker cannot take waits
        in the worker, parked, and past parking's bounds in the broker).
    """
    requeue: Requeue | None = getattr(transport, "requeue", None)
    return requeue


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
