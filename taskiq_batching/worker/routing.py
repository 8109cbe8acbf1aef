"""Routing: where each delivery the pump reads goes.

A read is a chunk of deliveries. Each one is decoded once and goes to one
of these places, in the order read:

* taken: a batched message whose task has room (``Admission``);
* parked: a batched message over its task's bounds, or behind its task's
  parked ones (``parking.py``);
* given back: such a message once parking is full, to the tail of the
  queue, where the transport can (``giving.py``);
* forwarded: a batched message of a task whose batches wait in the broker
  (``taking.py``), for the transport's forwarder, unless its arguments do
  not fit its batch function (``fits``: it is taken, and fails at once);
* handed: anything else, to taskiq's Receiver, unchanged.

On a broker without acks (a Redis list) a delivery read is gone from the
broker: the router keeps at most the one the Receiver's pull takes and
sizes the next read by what this one held (``MAX_UNACKED_CHUNK``).
"""

import asyncio
import math
from collections import deque
from collections.abc import Callable

from taskiq import AsyncBroker

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.broker_keys import NO_KEY, broker_key, deadline_ms
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.core.keys import batch_key
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.decode import decode
from taskiq_batching.worker.giving import GiveBacks
from taskiq_batching.worker.own_share import OwnShare
from taskiq_batching.worker.parking import Admission, Parking

#: Most deliveries taken per read of a transport whose unread deliveries
#: would be lost (a Redis list); the read size grows to it while reads
#: hold only batched messages, and drops to 1 after one that did not.
MAX_UNACKED_CHUNK = 100

Parked = tuple[Envelope, Delivery]


class Router:
    """Sorts what the pump reads: taken, parked, or handed to the Receiver.

    :param broker: the broker (decodes messages).
    :param batcher: its batcher (which tasks are batched, their bounds).
    :param transport: the broker's transport.
    """

    def __init__(
        self, broker: AsyncBroker, batcher: Batcher, transport: Transport
    ) -> None:
        self.broker = broker
        self.batcher = batcher
        self.transport = transport
        self.acknowledges = acknowledges = transport.acknowledges
        #: Deliveries for the Receiver, in order.
        self.handoff: deque[Delivery] = deque()
        self.parked = Parking(acknowledges)
        #: Deliveries read so far (``--max-tasks-per-child``).
        self.taken = 0
        #: Deliveries asked for per read.
        self.read_size = 1 if not acknowledges else MAX_UNACKED_CHUNK
        #: Batched tasks whose messages wait in the broker: what is read of
        #: them is forwarded there (``taking.Taker.forward``), not taken.
        self.forwarded: set[str] = set()
        #: Whether a delivery was read where its batch waits (not forwarded).
        self.waited: Callable[[Delivery], bool] | None = None
        #: Those tasks' reads, when a task's messages are forwarded only
        #: while this worker's share would not fill its batches (a task
        #: not in it: always; ``own_share.py``).
        self.shares: dict[str, OwnShare] = {}
        #: Deliveries of those tasks read and not forwarded yet, by task.
        self.forwarding: dict[str, list[tuple[Delivery, str]]] = {}
        #: Their keys' earliest ``batch_deadline`` (UNIX ms), by task.
        self.marks: dict[str, dict[str, int]] = {}
        #: Messages given back to the tail of the queue past parking's bounds.
        self.giving = GiveBacks(transport)

    def limit(self, max_tasks: int | None) -> int:
        """How many deliveries the next read may take.

        :param max_tasks: ``--max-tasks-per-child`` (None: no limit).
        :return: the read's size; 0 once the worker has taken its share.
        """
        limit = self.read_size
        if max_tasks is not None:
            limit = min(limit, max_tasks - self.taken)
        return max(limit, 0)

    def sort(self, chunk: list[Delivery]) -> tuple[list[Parked], list[Delivery]]:
        """Take a chunk's batched messages; hand the rest to the Receiver.

        :param chunk: deliveries of one read.
        :return: the messages taken (admitted), and the deliveries to give
            back to the broker at once (see ``_keep_one_handed``).
        """
        taken: list[Parked] = []
        handed_before = len(self.handoff)
        admission = Admission(self.batcher.bounds)
        # Looked up once per read, not per message: nothing the loop runs
        # changes which tasks are batched or forwarded.
        broker, specs, handoff = self.broker, self.batcher.specs, self.handoff
        parked, forwarding = self.parked, self.forwarded
        giving = self.giving
        # Parking's bounds past which messages are given back (none when
        # the transport cannot give back): ``parking_full``, read once.
        full_count, full_bytes = self._give_back_bounds(giving.enabled)
        now = asyncio.get_running_loop().time()
        forwarded = given = 0
        # Something not given back was read since the last give-back: the
        # pass over the queue goes on (``GiveBacks.other``, told once).
        other = False
        for delivery in chunk:
            envelope = decode(broker, delivery.data)
            if envelope is None or envelope.task_name not in specs:
                handoff.append(delivery)
                other = True
                continue
            name = envelope.task_name
            if (
                forwarding
                and name in forwarding
                and self._forward(delivery, envelope, now)
            ):
                forwarded += 1
                other = True
                continue
            size = envelope.size = len(delivery.data)
            # Behind its task's parked messages, if any: in order.
            if name not in parked.waiting and admission.take(name, size):
                taken.append((envelope, delivery))
            elif (
                parked.count >= full_count or parked.size >= full_bytes
            ) and giving.saturated(now):
                if other:
                    giving.other()
                    other = False
                giving.give(delivery, envelope)
                given += 1
                continue
            else:
                parked.park(name, delivery, envelope)
            other = True
        if other:
            giving.other()
        # Forwarded: taken when their batch is; given back: not taken.
        self.taken += len(chunk) - forwarded - given
        extra: list[Delivery] = []
        if not self.acknowledges:
            extra = self._keep_one_handed(handed_before, len(chunk))
        return taken, extra

    def _forward(self, delivery: Delivery, envelope: Envelope, now: float) -> bool:
        """Keep a message for the forwarder if it moves to where its batch waits.

        :param now: the read's loop time.
        :return: whether it was kept (else it is taken or parked as read).
        """
        if not self._forwards(delivery, envelope, now):
            return False
        name = envelope.task_name
        key = forward_key(self.batcher.specs[name], envelope)
        self.forwarding.setdefault(name, []).append((delivery, key))
        ms = deadline_ms(envelope.labels)
        marks = self.marks.setdefault(name, {})
        if ms is not None and ms < marks.get(key, ms + 1):
            marks[key] = ms
        return True

    def batched_where_read(self, task_name: str) -> bool:
        """Whether this worker's own reads of a task (``own_share.py``) fill batches.

        :param task_name: a batched task.
        :return: True while its share fills batches where it is read.
        """
        share = self.shares.get(task_name)
        return share is not None and share.filling

    def _forwards(self, delivery: Delivery, envelope: Envelope, now: float) -> bool:
        """Whether a message of a task whose batches wait in the broker moves there.

        Not one read where its batch waits (AMQP's queue per task), nor
        one its batch function refuses (it is taken and fails at once),
        nor, where the forwarder says so, one of a task whose reads here
        fill this worker's batches (``own_share.py``).
        """
        if self.waited is not None and self.waited(delivery):
            return False
        share = self.shares.get(envelope.task_name)
        if share is not None and share.read(now):
            return False
        return fits(self.batcher.specs[envelope.task_name], envelope)

    def parking_full(self) -> bool:
        """Whether parking is at its bounds (its own, or half the broker's prefetch).

        Parked messages count against a broker's prefetch: past half of it,
        the broker would soon send nothing more, and the messages behind
        the backlog could not be read.
        """
        count, size = self._give_back_bounds(True)
        return self.parked.count >= count or self.parked.size >= size

    def _give_back_bounds(self, can_give: bool) -> tuple[float, float]:
        """Parked messages and bytes at which parking counts full (``parking_full``).

        :param can_give: whether the transport can give messages back;
            if not, bounds never reached.
        :return: the message count and the wire bytes.
        """
        if not can_give:
            return math.inf, math.inf
        parked = self.parked
        count: float = parked.limit
        prefetch = self.transport.prefetch
        if prefetch is not None:
            count = min(count, max(prefetch // 2, 1))
        return count, parked.max_bytes

    def _keep_one_handed(self, handed_before: int, read: int) -> list[Delivery]:
        """On a broker without acks, what to give back: the Receiver cannot take it.

        Such a broker forgets a message once delivered: keeping more than
        this pull's one would read ahead of the Receiver.
        """
        extra = list(self.handoff)[handed_before + 1 :]
        if len(self.handoff) > handed_before:
            self.read_size = 1
        elif read >= self.read_size:
            self.read_size = min(2 * self.read_size, MAX_UNACKED_CHUNK)
        for _ in extra:
            self.handoff.pop()
        self.taken -= len(extra)
        return extra

    def unpark(self) -> list[Parked]:
        """Parked messages whose task has room now, in order within each task.

        :return: them, decoded and admitted.
        """
        ready: list[Parked] = []
        broker = self.broker
        for one in self.parked.unpark(Admission(self.batcher.bounds)):
            kept, delivery = one
            if kept is not None:  # decoded, its size set: handed on as parked
                ready.append(one)  # type: ignore[arg-type]  # (no cast call)
                continue
            envelope = decode(broker, delivery.data)
            if envelope is None:  # decoded when read: it cannot fail now
                self.handoff.append(delivery)
                continue
            envelope.size = len(delivery.data)
            ready.append((envelope, delivery))
        return ready


def fits(spec: BatchSpec, envelope: Envelope) -> bool:
    """Whether a message's arguments fit its batch function and key (to forward it).

    One that does not would fail when taken, but could wait in the broker
    for batch-mates first (alone under its key, for ``batch_timeout`` or
    forever): it is taken here instead, and fails at once, alone, as when
    read (``Lifecycle.accept``).

    :param spec: its task.
    :param envelope: the decoded message.
    :return: False when its arguments would be refused.
    """
    try:
        _, args, kwargs = spec.signature.prepare(
            spec.task_name, envelope.task_id, envelope.args, envelope.kwargs
        )
        batch_key(args, kwargs)  # what the taker keys it by (Unkeyable...)
    except Exception:  # BatchItemError, RecursionError...: its own failure
        return False
    return True


def forward_key(spec: BatchSpec, envelope: Envelope) -> str:
    """The broker key a forwarded message waits under (it only groups).

    The message is a sender's: anything about it may be crafted (a nesting
    JSON cannot write, a ``batch_key`` that raises). Then it waits under
    the task's plain key, and the worker that takes it keys it itself.

    :param spec: its task.
    :param envelope: the decoded message.
    :return: its key.
    """
    item = envelope.args[0] if envelope.args else None
    try:
        return broker_key(envelope.args[1:], envelope.kwargs, spec.settings.key, item)
    except Exception:  # RecursionError, ValueError...: grouping is optional
        return NO_KEY
