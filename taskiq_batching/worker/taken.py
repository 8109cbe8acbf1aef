"""Batches taken from the broker, into the worker (``wait_in_broker``).

Each message taken goes through the one lifecycle of a batched message
(``Lifecycle.accept``: ``pre_execute``, acks, validation that fails a
message alone, its policies: key, filter, cost, deadline), into the
worker's buffers, where the flush rules split a taken batch by
``batch_max_cost``, ``batch_max_bytes``, keys and deadlines as they split
what is read. What is left then (``FlushRules.flush_taken``):

* of a batch taken by its deadline (``timeout``: its oldest message's
  ``batch_timeout`` from the send; ``deadline``: a ``batch_deadline``):
  it runs at once, with that reason;
* of a batch taken full (``size``) that lost messages (rejected,
  filtered by ``batch_where``): it stays open, its timer running from its
  oldest send, and the next take of its broker key takes what it lacks
  (``needs``), so that batch-mates of a bad message still run together,
  as when read.

Tasks whose settings are about what one worker holds open
(``per_worker_reason``: ``batch_min_size``, ``batch_max_keys``) do not
wait in the broker; each worker buffers them, and says so at start.
"""

import contextlib
import logging
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

from taskiq import AsyncBroker

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.buffer import Envelope, Held
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import TakenBatch, per_worker_reason
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.decode import decode
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.routing import Router

logger = logging.getLogger("taskiq_batching")


class Intake:
    """Accepts taken batches and remembers what their short remainders lack.

    :param broker: the broker (decodes messages).
    :param batcher: its batcher.
    :param lifecycle: accepts the messages taken.
    :param router: the pump's router (hands to the Receiver, counts what
        is taken for ``--max-tasks-per-child``).
    """

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: Batcher,
        lifecycle: Lifecycle,
        router: Router,
    ) -> None:
        self.broker = broker
        self.batcher = batcher
        self.lifecycle = lifecycle
        self.router = router
        #: Open buffers left short by a batch taken full, and its broker key.
        self.short: dict[tuple[str, Hashable], str] = {}

    async def accept(self, batches: Sequence[TakenBatch]) -> None:
        """Accept the messages of whole batches; flush what is due of them.

        :param batches: what one take returned.
        """
        taken: list[tuple[Envelope, Delivery]] = []
        # Each message's batch (its flush reason and key), in ``taken``'s order.
        places: list[tuple[FlushReason, str]] = []
        counts: Counter[str] = Counter()
        specs = self.batcher.specs
        for batch in batches:
            place = (_reason(batch.reason), batch.key)
            for delivery in batch.deliveries:
                envelope = decode(self.broker, delivery.data)
                if envelope is None or envelope.task_name not in specs:
                    # Not a message of a batched task: taskiq's, as when read.
                    self.router.handoff.append(delivery)
                    continue
                envelope.size = len(delivery.data)
                counts[envelope.task_name] += 1
                taken.append((envelope, delivery))
                places.append(place)
            self.router.taken += len(batch.deliveries)
        for task_name, count in counts.items():  # counted before any await
            self.batcher.bounds.take(task_name, count)
        held = await self.lifecycle.accept(taken)
        if not self.batcher.buffers:
            return  # every batch taken flushed whole: no remainder
        placed = list(zip(held, places_of(held, taken, places), strict=True))
        left = self.batcher.flush_taken([(one, place[0]) for one, place in placed])
        keys = {id(one): place[1] for one, place in placed}
        for buffer_key, one in left:
            self.short[buffer_key] = keys[id(one)]

    def needs(self, spec: BatchSpec) -> dict[str, int]:
        """What this worker's short remainders of a task lack, by broker key.

        :param spec: the batched task.
        :return: for each broker key, the most one of its buffers lacks.
        """
        size = spec.settings.batch_size
        needs: dict[str, int] = {}
        for buffer_key, broker_key in list(self.short.items()):
            if buffer_key[0] != spec.task_name:
                continue
            buffer = self.batcher.buffers.get(buffer_key)
            if buffer is None:  # flushed since (its timer, a stop, a budget)
                del self.short[buffer_key]
                continue
            lack = size - len(buffer.items)
            if lack > 0:
                needs[broker_key] = max(needs.get(broker_key, 0), lack)
        return needs


def log_per_worker(specs: Iterable[BatchSpec], served: list[BatchSpec]) -> None:
    """Say which batched tasks each worker buffers alone, and why.

    :param specs: the batched tasks.
    :param served: those whose messages wait in the broker.
    """
    for spec in specs:
        reason = per_worker_reason(spec)
        if spec not in served and reason is not None:
            logger.info(
                "taskiq_batching: %s is batched by each worker alone, not in the "
                "broker (wait_in_broker): %s bound(s) what one worker buffers",
                spec.task_name,
                reason,
            )


def places_of(
    held: Sequence[Held],
    taken: Sequence[tuple[Envelope, Delivery]],
    places: Sequence[tuple[FlushReason, str]],
) -> Sequence[tuple[FlushReason, str]]:
    """The batch of each message held: ``held`` is ``taken`` in order, less some.

    :param held: the messages held.
    :param taken: every message accepted.
    :param places: each taken one's batch.
    :return: each held one's batch.
    """
    if len(held) == len(taken):
        return places
    found: list[tuple[FlushReason, str]] = []
    at = 0
    for one in held:
        while taken[at][1] is not one.delivery:
            at += 1
        found.append(places[at])
        at += 1
    return found


def _reason(value: str) -> FlushReason:
    """The flush reason a source gave (``size``, ``timeout``, ``deadline``)."""
    with contextlib.suppress(ValueError):
        return FlushReason(value)
    return FlushReason.TIMEOUT
