"""A worker's leases of its batched tasks, and the forwarding that feeds them.

``Leases`` creates the batch stream (``<stream>-batch``, subjects
``<subject>.batch.>``, work-queue retention) and one durable per batched task
(``<durable>-b-<token>``, ``max_waiting=1``, ``max_ack_pending`` unbounded:
each process holds at most one round), starts a ``LeaseReader`` per task,
and moves batched messages read on the main consumer to their task's
subject (see ``nats_lease.py``): those a plain taskiq kicker sent there
(a producer with the plugin publishes to the task's subject itself,
``nats_send.py``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import Delivery
from taskiq_batching.transports.nats_lease import LeaseReader, task_token
from taskiq_batching.transports.nats_pull import SENT_AT, Unsettled
from taskiq_batching.transports.nats_send import batch_subject, ensure_batch_stream

logger = logging.getLogger("taskiq_batching")

Settle = Callable[[Sequence[Unsettled]], Awaitable[None]]


class Leases:
    """The lease readers of one worker's batched tasks.

    :param broker: taskiq-nats's ``PullBasedJetStreamBroker``.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.specs: dict[str, BatchSpec] = {}
        self.readers: dict[str, LeaseReader] = {}

    def configure(self, specs: Sequence[BatchSpec]) -> None:
        """The batched tasks this worker runs (known at its start)."""
        self.specs = {spec.task_name: spec for spec in specs}

    def subject_of(self, task_name: str) -> str:
        """Where a batched task's messages wait."""
        return batch_subject(self.broker, task_name)

    async def start(
        self, ack_wait: float, pull_subject: str, sink: Callable[[Delivery], None]
    ) -> None:
        """Create the stream and durables; start a reader per task.

        :param ack_wait: the main consumer's ``ack_wait`` (seconds).
        :param pull_subject: the main consumer's ``MSG.NEXT`` subject (its
            API prefix is reused).
        :param sink: called with each delivery a reader receives.
        """
        js = self.broker.js
        stream = await ensure_batch_stream(self.broker)
        prefix = pull_subject.split(".CONSUMER.MSG.NEXT.")[0]
        for name, spec in self.specs.items():
            durable = f"{self.broker.durable}-b-{task_token(name)}"
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_ack_pending=-1,
                max_waiting=1,
                filter_subject=self.subject_of(name),
            )
            await js.add_consumer(stream, config)
            reader = LeaseReader(
                self.broker.client,
                f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}",
                durable,
                spec.settings.batch_size,
                spec.settings.batch_timeout,
                sink,
            )
            await reader.start()
            self.readers[name] = reader

    def held(self) -> list[Unsettled]:
        """Every message the readers received and nobody settled."""
        return [
            held for reader in self.readers.values() for held in reader.held.values()
        ]

    def unhold(self, held: Any) -> bool:
        """Settled; True if it was a reader's message."""
        for reader in self.readers.values():
            if reader.owns(held):
                reader.unhold(held)
                return True
        return False

    async def forward(self, deliveries: list[Delivery], ack: Settle) -> list[Delivery]:
        """Move batched messages of the main consumer to their task's subject.

        :param deliveries: what the main consumer (and the readers) gave.
        :param ack: acks originals once forwarded.
        :return: the deliveries to hand on (plain tasks, the readers' own).
        """
        keep: list[Delivery] = []
        moved: list[tuple[str, Delivery]] = []
        for delivery in deliveries:
            name = self._task_of(delivery)
            if name is None:
                keep.append(delivery)
            else:
                moved.append((name, delivery))
        if not moved:
            return keep
        try:
            await asyncio.gather(*(self._publish(name, d) for name, d in moved))
        except Exception as exc:
            # Not acked: kept as read (the worker batches them here, as today).
            logger.warning(
                "taskiq_batching: cannot move %d NATS message(s) to their "
                "batched task's subject: %s; batched in this worker",
                len(moved),
                describe(exc),
            )
            return keep + [delivery for _, delivery in moved]
        await ack([delivery.handle for _, delivery in moved])
        return keep

    def _task_of(self, delivery: Delivery) -> str | None:
        """The batched task a main-consumer delivery is for, if any."""
        if not self.readers or self.from_reader(delivery.handle):
            return None
        try:
            name = self.broker.formatter.loads(delivery.data).task_name
        except Exception:
            return None  # not a taskiq message: the worker says so, as today
        return name if name in self.readers else None

    def from_reader(self, held: Any) -> bool:
        """Whether ``held`` came from a reader (not from the main consumer)."""
        return any(reader.owns(held) for reader in self.readers.values())

    async def _publish(self, name: str, delivery: Delivery) -> None:
        handle: Unsettled = delivery.handle
        headers = {"Nats-Msg-Id": f"{self.broker.stream_name}-{handle.sequence}"}
        if delivery.sent_at is not None:
            headers[SENT_AT] = repr(delivery.sent_at)
        await self.broker.js.publish(
            self.subject_of(name), delivery.data, headers=headers
        )

    async def stop(self) -> None:
        """Stop every reader (each lets its slot go)."""
        for reader in self.readers.values():
            await reader.stop()
