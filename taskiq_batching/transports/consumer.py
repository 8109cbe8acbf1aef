"""A broker's reading side: what every broker needs, the rest defaulted.

A transport subclasses ``Consumer[Handle]``, ``Handle`` being what acking
one of its deliveries takes (a stream entry, an AMQP delivery tag...). It
implements the members every broker needs (``read``, ``interrupt``,
``ack``, ``release``, ``close``); the optional ones are defaulted here,
once, to what a broker that redelivers by itself wants (nothing to
reclaim, check or forget; no batches waiting in the broker; nothing to
cancel before a stop). The table in
docs/design.md ("The consumer's members") says which transport overrides
which.
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

from taskiq import AckableMessage

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import BatchSource, Forwarder
from taskiq_batching.transports.delivery import Delivery

#: What acking one delivery takes.
Handle = TypeVar("Handle")


@runtime_checkable
class Owning(Protocol):
    """A consumer holding a client it opened itself (a Redis sentinel's master).

    ``BatchingMiddleware.shutdown`` closes it: not ``close()``, which the
    pump calls before taskiq's Receiver has finished the plain tasks that
    still ack through that client.
    """

    async def shutdown(self) -> None:
        """Close what this consumer opened (the broker shuts down)."""


class Consumer(ABC, Generic[Handle]):
    """A broker's reading side for a batching worker (see ``base.Transport``).

    A subclass also has ``outstanding`` (a counter or a property: the
    deliveries it holds against ``prefetch``); optionally ``requeue``
    (``base.requeuer``) and ``lost`` (AMQP: whether the broker took a
    delivery back). It sends nothing through a ``sender.Sender`` (the
    producer's side, apart): it forwards with its ``forwarder`` and gives
    back with ``requeue``.
    """

    #: The transport's name in logs (``redis-stream``, ``generic`` ...).
    name: str
    #: Whether deliveries must be acked (see ``base.Transport``).
    acknowledges: bool = True
    #: Unacked deliveries the broker gives this consumer at most, if bounded.
    prefetch: int | None = None
    #: Seconds between two ``reclaim`` calls; None: the broker redelivers.
    reclaim_interval: float | None = None
    #: Where batched tasks' messages wait in the broker, taken as whole batches.
    batches: BatchSource | None = None
    #: Moves batched messages read on the main queue to where they wait.
    forwarder: Forwarder | None = None

    if TYPE_CHECKING:  # a counter or a property of each subclass

        @property
        def outstanding(self) -> int:
            """Deliveries held against ``prefetch`` (``base.Transport``)."""

    @abstractmethod
    async def read(self, limit: int) -> list[Delivery]:
        """Wait for the next deliveries, at most ``limit`` (``base.Transport.read``)."""

    @abstractmethod
    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        """Stop a read in progress, losing nothing it took (``base.Transport``)."""

    @abstractmethod
    async def ack(self, handles: Sequence[Handle]) -> None:
        """Acknowledge deliveries, in as few round trips as the broker allows."""

    @abstractmethod
    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries read but not processed back to the broker."""

    @abstractmethod
    async def close(self) -> None:
        """Stop reading for good."""

    async def stop_consuming(self) -> None:
        """Let the broker deliver to other workers; by default nothing to do.

        A broker that pushes deliveries (AMQP) stops pushing them here as
        the worker starts to stop, before it finishes what it holds.
        """

    def passed_on(self) -> Sequence[str]:
        """Batched tasks nothing more of comes to this worker; none by default.

        :return: their names (``base.Transport.passed_on``).
        """
        return ()

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Warn about broker settings these tasks defeat; by default nothing to check.

        :param specs: the worker's batched tasks.
        """

    async def reclaim(self) -> list[Delivery]:
        """Take over a dead consumer's deliveries; none by default (redelivered).

        :return: them, now this consumer's.
        """
        return []

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """Stop tracking deliveries left unacked; by default nothing is tracked.

        :param deliveries: they stay unacked, for the broker to redeliver.
        """

    def for_receiver(self, delivery: Delivery) -> bytes | AckableMessage:
        """The delivery as taskiq's Receiver takes it: acked through ``ack``.

        :param delivery: a delivery of a task the worker does not batch.
        :return: its bytes when it has no ack, else them with an ack of its handle.
        """
        if delivery.handle is None:
            return delivery.data
        return AckableMessage(
            data=delivery.data, ack=partial(self.ack, [delivery.handle])
        )
