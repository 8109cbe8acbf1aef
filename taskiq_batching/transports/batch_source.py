"""Where batches wait in the broker: what the taker and the forwarding use.

With ``BatchingMiddleware(wait_in_broker=True)``, a transport whose broker
can keep a batched task's messages until a batch is worth taking exposes
a ``BatchSource`` (its ``batches``), which the worker's taker
(``worker/taking.py``) takes whole batches from, and a ``Forwarder`` (its
``forwarder``), which moves what a plain producer put on the main queue
to where they wait (``worker/forwarding.py``). docs/fleet.md has each
broker's design.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery


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
        self,
        spec: BatchSpec,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
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
        :param full_only: take only full batches (the worker's read-ahead
            while its slots run: ``Taker``); the reply's wait is then
            meaningless.
        """

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        """Wait until a message of one of these tasks may have arrived, or the timeout.

        One blocking command per call (an idle worker costs the broker ~1 command
        per ``timeout_seconds``); returns early when woken by a send.
        """


class ForwardingPaused(RuntimeError):
    """A forwarder holds off after a failure: the worker batches what it read.

    Raised by ``Forwarder.forward`` while it pauses (RabbitMQ's, after a
    copy was not confirmed); the failure itself was logged once, so the
    worker parks the messages without logging each forward refused.
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
    (not forwarded again). A forwarder whose ``forward_only_to_fill`` is
    True (AMQP's) is handed a task's messages only while this worker
    reads fewer than a batch of them within ``batch_timeout``
    (``worker/own_share.py``): past that, its own batches fill.
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
