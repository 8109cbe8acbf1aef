"""Any taskiq broker and result backend, through their own public methods.

Reads with the broker's own ``listen()``, one delivery per read; acks with
the acks it hands out; stores with ``set_result``. Its sender is
``sender.Sender`` itself, which ``kick``s each message.
Errors of the broker's listener propagate, as under taskiq's Receiver.
"""

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from taskiq import (
    AckableMessage,
    AsyncBroker,
    AsyncResultBackend,
    BrokerMessage,
    TaskiqResult,
)
from taskiq.utils import maybe_awaitable

from taskiq_batching.transports.base import Requeue, finished_read
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.shared import SEND_CONCURRENCY as SEND_CONCURRENCY
from taskiq_batching.transports.shared import ack_each as ack_each
from taskiq_batching.transports.shared import acked_after_resend, cancel_until_done
from taskiq_batching.transports.shared import kick_each as kick_each

#: Seconds between repeated cancellations of a read when the worker stops.
#: A listener sending through redis-py (taskiq-redis's, which the Redis
#: brokers use without hiredis) can lose one on Python 3.11
#: (``redis_common.cancel``), and would block until a message came; long
#: enough not to cut short a listener's own cleanup under the first.
CANCEL_RETRY_SECONDS = 0.5

Listen = Callable[[], AsyncGenerator[bytes | AckableMessage, None]]


class GenericTransport(Consumer[Any]):
    """A broker through ``listen()`` and its acks (``kick`` to give back).

    :param broker: the broker.
    :param listen: its own ``listen`` (before the worker hook wraps it).
    :param prefetch: unacked deliveries the broker gives at most, if known.
    """

    name = "generic"
    #: Deliveries read and not yet acked (set per instance).
    outstanding: int = 0

    def __init__(
        self,
        broker: AsyncBroker,
        listen: Listen | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self._listen = listen or broker.listen
        self._listener: AsyncGenerator[bytes | AckableMessage, None] | None = None
        #: Until a delivery without an ack shows otherwise.
        self.acknowledges = True
        self.outstanding = 0

    async def read(self, limit: int) -> list[Delivery]:
        """One delivery of the broker's listener (see ``Transport.read``)."""
        if self._listener is None:
            self._listener = self._listen()
        return [self._delivery(await anext(self._listener))]

    def _delivery(self, raw: bytes | AckableMessage) -> Delivery:
        if isinstance(raw, AckableMessage):
            self.outstanding += 1
            return Delivery(raw.data, raw.ack, raw)
        self.acknowledges = False
        return Delivery(raw, None, raw)

    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        """Cancel the read; keep what the listener handed over while stopping.

        Cancelled again while it runs: a cancellation may be lost.
        """
        await cancel_until_done(reading, CANCEL_RETRY_SECONDS)
        return finished_read(reading)

    async def ack(self, handles: Sequence[Any]) -> None:
        """Call each delivery's own ack, concurrently."""
        self.outstanding -= len(handles)
        await ack_each(handles)

    @property
    def requeue(self) -> Requeue | None:
        """``kick`` again, then ack (``Requeue``); None for a broker without acks.

        A broker that delivers without acks may be a fan-out (taskiq-redis's
        ``PubSubBroker``): a message kicked again would reach every worker.
        """
        return self._kick_again if self.acknowledges else None

    async def _kick_again(
        self, given: Sequence[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        """``kick`` each message again, then ack the ones sent.

        Sent again as its sender sent it (task_id, labels); a broker that
        keeps no send time of its own starts its ``batch_timeout`` again.
        """
        outcomes = await asyncio.gather(
            *(self.broker.kick(message) for _, message in given),
            return_exceptions=True,
        )
        sent = [
            d
            for (d, _), o in zip(given, outcomes, strict=True)
            if not isinstance(o, BaseException)
        ]
        acks = [delivery.handle for delivery in sent if delivery.handle is not None]
        await acked_after_resend(self.ack, acks)
        return [
            d
            for (d, _), o in zip(given, outcomes, strict=True)
            if isinstance(o, BaseException)
        ]

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Leave them unacked: the broker delivers them again by itself."""

    async def close(self) -> None:
        """Close the broker's listener; its errors propagate."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()

    def for_receiver(self, delivery: Delivery) -> bytes | AckableMessage:
        """What the broker's listener yielded; its ack counted if prefetch matters."""
        original = delivery.original
        assert original is not None
        if self.prefetch is None or not isinstance(original, AckableMessage):
            if isinstance(original, AckableMessage):
                self.outstanding -= 1  # no longer counted: nothing depends on it
            return original
        ack = original.ack

        async def counted_ack() -> None:
            self.outstanding -= 1
            await maybe_awaitable(ack())

        return AckableMessage(data=original.data, ack=counted_ack)


class GenericResults:
    """A result backend through ``set_result``, one call per result, concurrently.

    :param backend: the result backend.
    """

    def __init__(self, backend: AsyncResultBackend[Any]) -> None:
        self.backend = backend

    async def write(
        self, results: Sequence[tuple[str, TaskiqResult[Any]]]
    ) -> list[tuple[int, BaseException]]:
        """Store each result (see ``ResultWriter.write``)."""
        outcomes = await asyncio.gather(
            *(self.backend.set_result(task_id, result) for task_id, result in results),
            return_exceptions=True,
        )
        return [
            (index, outcome)
            for index, outcome in enumerate(outcomes)
            if isinstance(outcome, BaseException)
        ]
