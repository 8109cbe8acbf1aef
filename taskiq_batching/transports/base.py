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
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
        AMQP delivery tag, an ack callable...); None when it has no ack. A
        handle whose ``needs_ack`` is False is released, never acked (a
        message taken from a Redis list has no ack, as one read).
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


@dataclass(slots=True)
class TakenBatch:
    """A whole batch of one batched task, taken from where it waited in the broker.

    :param key: the batch key as the broker knows it ("-" without ``batch_key``).
    :param deliveries: its messages in send order; each handle is acked with
        the transport's ``ack`` like any other delivery.
    :param reason: why it was taken now: ``"size"`` (a full batch waited) or
        ``"timeout"`` (its oldest message reached ``batch_timeout`` since its send).
    """

    key: str
    deliveries: list[Delivery]
    reason: str


@dataclass(slots=True)
class Taken:
    """What one ``take`` got.

    :param batches: whole batches, at most ``room``, each of another key.
    :param wait_seconds: seconds until the nearest deadline of what still
        waits, or None when nothing waits (then call ``idle``).
    """

    batches: list[TakenBatch]
    wait_seconds: float | None


def per_worker_reason(spec: BatchSpec) -> str | None:
    """Why a batched task cannot wait in the broker, if it cannot.

    ``batch_min_size`` (a timer that holds back a short buffer) and
    ``batch_max_keys`` (a bound on the keys one process holds open, whose
    oldest flushes) are about what one worker buffers; in the broker
    nothing forms in a worker, so a fleet cannot honour them as one. Such
    a task is buffered by each worker, as without ``wait_in_broker``
    (docs/fleet.md, "What the preview honours").

    :param spec: a batched task.
    :return: the settings that keep it in the worker, or None.
    """
    settings = spec.settings
    found = []
    if settings.min_size is not None:
        found.append("batch_min_size")
    if settings.key is not None and settings.max_keys is not None:
        found.append("batch_max_keys")
    return ", ".join(found) or None


class BatchSource(Protocol):
    """Takes whole batches of batched tasks from where they wait in the broker.

    A transport that supports waiting in the broker exposes one as its
    ``batches`` attribute (``None`` otherwise: the worker buffers what it reads).
    """

    #: The longest a worker sleeps between two ``take`` calls while messages
    #: wait but none is due (seconds); the take's slack before a deadline.
    poll_seconds: float

    def serves(self, spec: BatchSpec) -> bool:
        """Whether this task's messages wait in the broker (else: read and buffered)."""

    async def take(
        self, spec: BatchSpec, room: int, needs: Mapping[str, int] | None = None
    ) -> Taken:
        """Take up to ``room`` whole batches of one task that are due.

        Due: by size, or by deadline.

        :param spec: the batched task.
        :param room: batches this worker may start now for it (>= 1): what
            ``batch_concurrency``, ``max_concurrent_batches`` and
            ``batch_max_keys`` leave.
        :param needs: keys (``broker_key``) whose short remainder this
            worker holds, and how many messages each lacks: such a key's
            batch is full, and taken, at that many.
        """

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        """Wait until a message of one of these tasks may have arrived, or the timeout.

        One blocking command per call (an idle worker costs the broker ~1 command
        per ``timeout_seconds``); returns early when woken by a send.
        """


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


class Forwarder(Protocol):
    """Moves batched messages read on the main queue to where their task's batches wait.

    A plain taskiq producer (without the plugin) sends a batched task's
    message to the main queue; a worker whose transport has a
    ``BatchSource`` serving the task hands what it reads there to the
    transport's ``forwarder`` attribute (``None``: it buffers them itself).
    A forwarder whose tasks wait where no ``BatchSource`` takes them (AMQP:
    a queue per task, read by the worker like the main one) also has
    ``serves(spec)`` (the tasks it forwards; else the source's) and
    ``waited(delivery)``, True for a delivery read where its batch waits
    (not forwarded again).
    """

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        """Move batched messages, read on the main queue, to where their batches wait.

        On return each message waits with its task's batches (counted from
        its original send) and is done with on the main queue (acked there);
        on error none of them is (the worker then batches them itself).
        NATS's (``nats_forward.Moves``) returns before the broker confirmed
        the moves, so that the worker reads on: it acks each original once
        its move is stored, and hands a refused one back to the worker's
        reads with ``waited`` True (the worker batches it). RabbitMQ's
        (``amqp_forward.Forwards``) returns before the publisher confirms
        too: it acks each original once its copy is confirmed, gives back
        to the main queue one that is not, and then raises for a while.

        :param deliveries: ``(delivery, its task, its broker key)`` as read
            on the main queue, in order (``core/broker_keys.py``: the key
            groups only; the worker still keys each message itself).
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
