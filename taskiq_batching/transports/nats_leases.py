"""A worker's leases: the NATS ``BatchSource`` (``wait_in_broker``).

``Leases`` creates the batch stream (``<stream>-batch``, subjects
``<subject>.batch.>``, work-queue retention) and one durable per batched
task it serves (``<durable>-b-<token>``, ``max_waiting=1``,
``max_ack_pending`` unbounded), starts a ``LeaseReader`` per task, and is
the transport's ``batches``: the taker (``worker/taking.py``) takes each
reader's batches whole, into the one lifecycle (``worker/taken.py``). A
task with ``per_worker_reason`` (``batch_min_size``, ``batch_max_keys``)
is not served: each worker buffers it from the main subject.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import Taken, per_worker_reason
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_lease import LeaseReader
from taskiq_batching.transports.nats_lease_keys import SLACK
from taskiq_batching.transports.nats_pull import Unsettled
from taskiq_batching.transports.nats_send import (
    batch_subject,
    ensure_batch_stream,
    task_token,
)

logger = logging.getLogger("taskiq_batching")


class Leases:
    """The lease readers of one worker's batched tasks (``BatchSource``, ``Forwarder``).

    :param broker: taskiq-nats's ``PullBasedJetStreamBroker``.
    :param start: starts the transport (its reading, then ``start`` here),
        once; a take may come before the first read.
    """

    #: A reader wakes the taker itself: this only bounds a take's pause.
    poll_seconds = SLACK

    def __init__(self, broker: Any, start: Callable[[], Awaitable[Any]]) -> None:
        self.broker = broker
        self._start_transport = start
        self.specs: dict[str, BatchSpec] = {}
        self.readers: dict[str, LeaseReader] = {}
        #: Set when a reader has a round ready (``idle`` waits on it).
        self.arrived = asyncio.Event()

    def serves(self, spec: BatchSpec) -> bool:
        """Whether a batched task waits in the broker (not when ``per_worker_reason``).

        :param spec: the task.
        :return: whether its messages wait on its own subject.
        """
        return per_worker_reason(spec) is None

    def configure(self, specs: Sequence[BatchSpec]) -> None:
        """The batched tasks this worker runs (known at its start)."""
        self.specs = {spec.task_name: spec for spec in specs if self.serves(spec)}

    def subject_of(self, task_name: str) -> str:
        """Where a batched task's messages wait."""
        return batch_subject(self.broker, task_name)

    async def start(self, ack_wait: float, pull_subject: str) -> None:
        """Create the stream and durables; start a reader per task served.

        :param ack_wait: the main consumer's ``ack_wait`` (seconds).
        :param pull_subject: the main consumer's ``MSG.NEXT`` subject (its
            API prefix is reused).
        """
        if not self.specs:
            return
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
                self.arrived.set,
            )
            await reader.start()
            self.readers[name] = reader

    # --- BatchSource -----------------------------------------------------------

    async def take(
        self,
        spec: BatchSpec,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
    ) -> Taken:
        """The task's rounds ready, up to ``room`` (``BatchSource.take``).

        With none ready, the task's reader asks the server for the next
        round (under the lease): each key is full at ``batch_size`` or,
        when this worker holds a short remainder of it, at what it lacks.

        :param spec: the batched task.
        :param room: batches this worker may start now (>= 1).
        :param needs: keys whose short remainder this worker holds, and
            what each lacks.
        :param full_only: only rounds that filled (``size``).
        :return: the rounds; no wait (the reader wakes ``idle``).
        """
        await self._start_transport()
        reader = self.readers.get(spec.task_name)
        if reader is None:
            return Taken([], None)
        return Taken(reader.take(room, needs, full_only=full_only), None)

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        """Wait until one of these tasks has a round ready, or the timeout.

        Costs the server nothing: the readers' requests are the cost.

        :param specs: the batched tasks.
        :param timeout_seconds: the longest wait.
        """
        readers = [self.readers.get(spec.task_name) for spec in specs]
        if any(reader is not None and reader.ready for reader in readers):
            return
        self.arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), timeout_seconds)

    # --- the transport's side ----------------------------------------------------

    def held(self) -> list[Unsettled]:
        """Every message the readers received and nobody settled."""
        return [
            held for reader in self.readers.values() for held in reader.held.values()
        ]

    def unhold(self, held: Any, acked: bool = False) -> bool:
        """Settled; True if it was a reader's message.

        :param held: the message's handle.
        :param acked: it is acked (its reader remembers it).
        :return: whether a reader held it.
        """
        for reader in self.readers.values():
            if reader.owns(held):
                reader.unhold(held, acked)
                return True
        return False

    async def stop(self) -> list[Delivery]:
        """Stop every reader (each lets its slot go).

        :return: what they received and the worker never took (to nak).
        """
        left: list[Delivery] = []
        for reader in self.readers.values():
            left += await reader.stop()
        return left
