"""taskiq-nats's pull-based JetStream broker, read in chunks.

The broker's own durable pull consumer (``broker.consumer``), fetched as
``fetch(batch=n, timeout=FETCH_TIMEOUT)``: a chunk of up to ``n``
messages, or none once the short timeout passes (the worker then checks
its timers). A fetch never asks for more than the consumer's
``max_ack_pending`` leaves room for: that is the worker's prefetch, read
once from ``consumer_info`` at the first read. It is shared by every
worker of the durable, so one worker may get fewer than that.

Acks are buffered publishes, then one ``flush`` (a round trip) for the
lot; deliveries read but not processed at stop are nak'ed (redelivered at
once, to any worker). When the worker stops, a fetch in progress is left
to end by itself (it does within ``FETCH_TIMEOUT``) rather than cancelled:
a cancelled fetch may leave messages in the client's buffer, found again
only after ``ack_wait``. Messages so buffered anyway are taken from the
buffer.

A consumer redelivers a message unacked for ``ack_wait``. A batch may
hold messages longer, so every ``ack_wait / 3`` the worker sends
``in_progress`` (``+WPI``, which restarts ``ack_wait``) for each message
it holds for a batch (buffered, running, or waiting for the Receiver);
messages handed to taskiq's Receiver are left as taskiq-nats leaves them.
Should a held message come back all the same (the event loop stalled
over ``ack_wait``), the redelivery is not taken twice: the held message
keeps its place and is acked through the newest delivery.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_nats.broker import BaseJetStreamBroker

from taskiq_batching._compat import nats_take_buffered
from taskiq_batching.core.run import BatchSpec
from taskiq_batching.errors import describe
from taskiq_batching.transports.base import Delivery
from taskiq_batching.transports.generic import SEND_CONCURRENCY, kick_each

logger = logging.getLogger("taskiq_batching")

#: Most messages one fetch asks for.
FETCH_MAX = 100
#: Seconds a fetch waits for a first message before it returns none.
FETCH_TIMEOUT = 1.0
#: Extra seconds a stopping worker waits for a fetch in progress to end.
INTERRUPT_GRACE = 1.0
#: The server's ``ack_wait`` when the consumer's config sets none, in seconds.
DEFAULT_ACK_WAIT = 30.0


def transport_for(broker: AsyncBroker, listen: Any = None) -> "NatsTransport | None":
    """The JetStream transport, for a pull-based broker that listens as shipped.

    :param broker: any broker.
    :param listen: unused (the broker's own listener is replaced).
    :return: the transport, or None for other brokers.
    """
    if (
        isinstance(broker, PullBasedJetStreamBroker)
        and type(broker).listen is PullBasedJetStreamBroker.listen
    ):
        return NatsTransport(broker)
    return None


class Held:
    """A message this worker read and has not acked or nak'ed yet.

    :param message: its newest delivery (a ``nats.aio.msg.Msg``).
    """

    __slots__ = ("handed", "message")

    def __init__(self, message: Any) -> None:
        self.message = message
        #: Handed to taskiq's Receiver (not kept alive by this transport).
        self.handed = False


class NatsTransport:
    """Reads, acks, naks and sends for taskiq-nats's ``PullBasedJetStreamBroker``.

    :param broker: the broker.
    """

    name = "nats-jetstream"
    acknowledges = True
    reclaim_interval: float | None = None  # the server redelivers by itself

    def __init__(self, broker: PullBasedJetStreamBroker) -> None:
        self.broker = broker
        #: ``max_ack_pending`` of the consumer, known after the first read.
        self.prefetch: int | None = None
        self.ack_wait: float | None = None
        self._held: dict[int, Held] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Messages read and not yet acked or nak'ed."""
        return len(self._held)

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Warn when a batch may hold a message longer than ``ack_wait``."""
        config = self.broker.consumer_config
        ack_wait = (config.ack_wait if config is not None else None) or (
            DEFAULT_ACK_WAIT
        )
        for spec in specs:
            timeout = spec.settings.batch_timeout
            if timeout is None:
                held = "until its buffer fills (size-only batching)"
            elif timeout + (spec.timeout or 0) < ack_wait:
                continue
            else:
                held = f"for {timeout + (spec.timeout or 0):g} s or more"
            logger.warning(
                "taskiq_batching: task %s may hold a message %s, but the NATS "
                "consumer's ack_wait=%g s redelivers it meanwhile unless the "
                "worker's in_progress keep-alive (every ack_wait/3) gets "
                "through; a stalled worker then gets duplicate runs elsewhere. "
                "Keep ack_wait above batch_timeout plus the longest batch.",
                spec.task_name,
                held,
                ack_wait,
            )

    # --- reading ---------------------------------------------------------

    async def read(self, limit: int) -> list[Delivery]:
        """The next messages of the consumer (see ``Transport.read``)."""
        if self.ack_wait is None:
            await self._start()
        batch = min(limit, FETCH_MAX)
        if self.prefetch is not None:
            batch = min(batch, self.prefetch - len(self._held))
        try:
            messages = await self.broker.consumer.fetch(
                batch=max(batch, 1), timeout=FETCH_TIMEOUT
            )
        except asyncio.TimeoutError:
            # nats.errors.TimeoutError, or asyncio's own, which nats-py's
            # fetch of many raises when its timeout ran out between two
            # requests (taskiq-nats's listener would stop on it).
            return []
        return self._deliveries(messages)

    async def _start(self) -> None:
        """Read the consumer's limits once; start keeping held messages alive."""
        info = await self.broker.consumer.consumer_info()
        pending = info.config.max_ack_pending
        self.prefetch = pending if pending is not None and pending > 0 else None
        self.ack_wait = info.config.ack_wait or DEFAULT_ACK_WAIT
        self._keepalive = asyncio.ensure_future(self._keep_alive(self.ack_wait / 3))

    def _deliveries(self, messages: Sequence[Any]) -> list[Delivery]:
        chunk: list[Delivery] = []
        for message in messages:
            sequence = message.metadata.sequence.stream
            held = self._held.get(sequence)
            if held is not None:
                # Redelivered while this worker still holds it: the held one
                # is acked (through this newest delivery), never run twice.
                held.message = message
                logger.warning(
                    "taskiq_batching: NATS redelivered message %d while this "
                    "worker held it (ack_wait %s s passed); kept the held one",
                    sequence,
                    self.ack_wait,
                )
                continue
            held = Held(message)
            self._held[sequence] = held
            chunk.append(Delivery(message.data, held))
        return chunk

    async def _keep_alive(self, interval: float) -> None:
        """Restart ``ack_wait`` of every held message, every ``interval`` s."""
        while True:
            await asyncio.sleep(interval)
            held = [one for one in self._held.values() if not one.handed]
            if not held:
                continue
            try:
                for one in held:
                    await one.message.in_progress()
                await self.broker.client.flush()
            except Exception as exc:
                logger.warning(
                    "taskiq_batching: cannot tell NATS %d held message(s) are "
                    "in progress: %s",
                    len(held),
                    describe(exc),
                )

    async def interrupt(self, reading: Any) -> list[Delivery]:
        """Let the fetch in progress end (within its timeout); keep its messages.

        Cancelled only if it outlives its timeout; messages it left in the
        client's buffer are taken from there.
        """
        await asyncio.wait({reading}, timeout=FETCH_TIMEOUT + INTERRUPT_GRACE)
        if not reading.done():
            reading.cancel()
            await asyncio.wait({reading})
        chunk: list[Delivery] = []
        if not reading.cancelled():
            error = reading.exception()
            if error is not None:
                raise error
            chunk = list(reading.result())
        return chunk + self._deliveries(nats_take_buffered(self.broker.consumer))

    async def reclaim(self) -> list[Delivery]:
        """Nothing to reclaim: the server redelivers after ``ack_wait``."""
        return []

    # --- acks --------------------------------------------------------------

    async def ack(self, handles: Sequence[Any]) -> None:
        """Ack each (a buffered publish), then one flush."""
        await self._settle(handles, nak=False)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Nak them: the server delivers them again at once, to any worker."""
        await self._settle([delivery.handle for delivery in deliveries], nak=True)

    async def _settle(self, handles: Sequence[Held], *, nak: bool) -> None:
        first: BaseException | None = None
        for held in handles:
            if self._held.get(held.message.metadata.sequence.stream) is held:
                del self._held[held.message.metadata.sequence.stream]
            try:
                if nak:
                    await held.message.nak()
                else:
                    await held.message.ack()
            except Exception as exc:
                first = first or exc
        await self.broker.client.flush()
        if first is not None:
            raise first

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """No longer held (nor kept alive): redelivered after ``ack_wait``."""
        for delivery in deliveries:
            held = delivery.handle
            sequence = held.message.metadata.sequence.stream
            if self._held.get(sequence) is held:
                del self._held[sequence]

    async def close(self) -> None:
        """Stop the keep-alive; nak what the client buffered and no fetch returned."""
        if self._closed:
            return
        self._closed = True
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        leftover = nats_take_buffered(self.broker.consumer)
        if leftover:
            for message in leftover:
                await message.nak()
            await self.broker.client.flush()

    def for_receiver(self, delivery: Delivery) -> AckableMessage:
        """As taskiq-nats's listener yields it: data and an ack (through here)."""
        held: Held = delivery.handle
        held.handed = True

        async def ack() -> None:
            await self._settle([held], nak=False)

        return AckableMessage(data=delivery.data, ack=ack)

    # --- sending -------------------------------------------------------------

    async def send(self, messages: Sequence[BrokerMessage]) -> None:
        """Publish every message as ``kick`` would, many at once."""
        broker = self.broker
        if type(broker).kick is not BaseJetStreamBroker.kick:
            await kick_each(broker, messages)
            return
        for start in range(0, len(messages), SEND_CONCURRENCY):
            chunk = messages[start : start + SEND_CONCURRENCY]
            await asyncio.gather(
                *(
                    broker.js.publish(
                        broker.subject, payload=message.message, headers=message.labels
                    )
                    for message in chunk
                )
            )
