"""taskiq-nats's pull-based JetStream broker, pulled in chunks, one chunk ahead.

The worker pulls from the broker's durable consumer itself
(``nats_pull.Pull``: an inbox of its own, one pull request at a time,
messages appended to a list by the subscription's callback). ``read``
takes up to its limit at once and sends the next request before it
returns, so the server delivers the next chunk while the worker runs
this one. Requests never ask for more than the consumer's
``max_ack_pending`` leaves room for, read from ``consumer_info`` at the
first read. That limit is the consumer's, shared by every process of the
durable: a process may hold less than it while the consumer as a whole is
at it, and the server delivers nothing more until something is acked.
So when a read gets nothing while this process holds messages, it asks
the server for the consumer's state (at most once per
``nats_pull.CONSUMER_CHECK_INTERVAL``); if the consumer is at its limit, the
worker's next look at ``prefetch`` finds this process full, and its
buffers flush by pressure (size-only batches would otherwise wait for
messages that never come, in every process at once).

Acks are buffered publishes, then one ``flush`` for the lot
(``nats_settle.py``). Acks sent while the connection is lost may never
reach the server, and a server killed may lose the last acks it had:
those messages come again. The first is logged; either way, a message
this worker acked (among the last ``ACKED_MEMORY``) that comes again is
acked again, not run twice (a log line counts them). A stopping worker
lets the request in progress end (within ``FETCH_TIMEOUT``) and naks what
it received but never used (redelivered at once, to any worker).

With ``wait_in_broker``, batched tasks wait on subjects of their own,
taken under a lease per task (``nats_leases.Leases``: ``batches``).
The producer's side is ``nats_sender.NatsSender`` (``sender_for``).

A consumer redelivers a message unacked for ``ack_wait``. A batch may
hold messages longer, so every ``ack_wait / 3`` the worker sends
``+WPI`` (in progress, which restarts ``ack_wait``) for each message it
holds (received, buffered, running); messages handed to taskiq's
Receiver are left as taskiq-nats leaves them.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker

from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import finished_read
from taskiq_batching.transports.batch_source import BatchSource, Forwarder
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_forward import Moves
from taskiq_batching.transports.nats_give_back import give_back
from taskiq_batching.transports.nats_leases import Leases
from taskiq_batching.transports.nats_pull import Pull, Unsettled, log_reacked
from taskiq_batching.transports.nats_sender import sender_for as sender_for
from taskiq_batching.transports.nats_sender import served
from taskiq_batching.transports.nats_settle import (
    ACK,
    IN_PROGRESS,
    NAK,
    publish_verdicts,
    warn_ack_wait,
)

logger = logging.getLogger("taskiq_batching")

#: The server's ``ack_wait`` when the consumer's config sets none, in seconds.
DEFAULT_ACK_WAIT = 30.0


def transport_for(
    broker: AsyncBroker, listen: Any = None, wait_in_broker: bool | None = None
) -> "NatsTransport | None":
    """The JetStream transport, for a pull-based broker that listens as shipped.

    :param broker: any broker.
    :param listen: unused (the broker's own listener is replaced).
    :param wait_in_broker: batched tasks wait in the broker (``nats_lease.py``);
        None: not yet by default (the re-publish costs more than it saves
        at 2,000 msg/s: docs/fleet.md).
    :return: the transport, or None for other brokers.
    """
    if served(broker):
        return NatsTransport(broker, wait_in_broker is True)
    return None


class NatsTransport(Consumer[Unsettled]):
    """Reads, acks and naks for taskiq-nats's ``PullBasedJetStreamBroker``.

    :param broker: the broker.
    :param wait_in_broker: batched tasks wait in the broker, read under a
        lease per task (``nats_lease.py``): a fleet batches as one; a
        producer with the plugin publishes them there (``NatsSender``).
    """

    name = "nats-jetstream"

    def __init__(
        self, broker: PullBasedJetStreamBroker, wait_in_broker: bool = False
    ) -> None:
        self.broker: PullBasedJetStreamBroker = broker
        leases = Leases(broker, self._ready) if wait_in_broker else None
        self._leases = leases
        #: Batches taken under each task's lease.
        self.batches: BatchSource | None = leases
        moves = Moves(broker, self.ack, self.release, self._back) if leases else None
        self._moves = moves
        #: Moves a plain producer's batched messages to their task's subject.
        self.forwarder: Forwarder | None = moves
        #: ``max_ack_pending`` of the consumer, known after the first read.
        self.max_ack_pending: int | None = None
        #: Unacked messages this process may hold now: ``max_ack_pending``,
        #: or what it holds when its last read found the consumer as a whole
        #: at that limit (nothing else comes until it acks: buffers flush).
        self.prefetch: int | None = None
        self.ack_wait: float | None = None
        self._pull: Pull | None = None
        self._starting = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Messages read and not yet acked or nak'ed."""
        pull = self._pull  # a lease's messages are not the main consumer's
        return 0 if pull is None else len(pull.held) - len(pull.unread)

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Warn when a batch may hold a message longer than ``ack_wait``."""
        if self._leases is not None:
            self._leases.configure(specs)
        config = self.broker.consumer_config
        warn_ack_wait(specs, (config.ack_wait if config else None) or DEFAULT_ACK_WAIT)

    # --- reading ---------------------------------------------------------

    async def _ready(self) -> Pull:
        """The started reading (the first read or take starts it, once)."""
        async with self._starting:
            return self._pull or await self._start()

    async def _start(self) -> Pull:
        """Read the consumer's limits; subscribe; start keeping messages alive."""
        consumer = self.broker.consumer
        info = await consumer.consumer_info()
        pending = info.config.max_ack_pending
        self.max_ack_pending = pending if pending is not None and pending > 0 else None
        self.prefetch = self.max_ack_pending
        self.ack_wait = info.config.ack_wait or DEFAULT_ACK_WAIT
        pull = Pull(self.broker.client, consumer, self.max_ack_pending)
        await pull.start()
        if self._leases is not None:
            await self._leases.start(self.ack_wait, pull.subject)
        self._pull = pull
        self._keepalive = asyncio.ensure_future(self._keep_alive(self.ack_wait / 3))
        return pull

    async def read(self, limit: int) -> list[Delivery]:
        """The next messages of the consumer (see ``Transport.read``)."""
        pull = await self._ready()
        self.prefetch = self.max_ack_pending  # the worker looked before this read
        while not pull.stopping:
            if pull.reacked:
                self._reacked(pull)
            if pull.unread:
                chunk = pull.take(limit)
                await pull.request(limit)  # the next chunk, while this one runs
                return chunk
            pull.arrived.clear()
            await pull.request(limit)
            await pull.wait()
            if not pull.unread:
                # None came: the worker checks its timers (and ``prefetch``).
                if self.outstanding and await pull.consumer_full(self.broker.consumer):
                    self.prefetch = self.outstanding
                return []
        return []

    def _back(self, deliveries: Sequence[Delivery]) -> None:
        if self._pull is not None:  # moves the stream refused: batched here
            self._pull.back(deliveries)

    def _reacked(self, pull: Pull) -> None:
        log_reacked(pull.reacked)
        pull.reacked = 0

    async def _keep_alive(self, interval: float) -> None:
        """Restart ``ack_wait`` of every held message, every ``interval`` s."""
        while True:
            await asyncio.sleep(interval)
            pull = self._pull
            held = [] if pull is None else list(pull.held.values())
            if self._leases is not None:
                held += self._leases.held()
            held = [h for h in held if not h.handed]
            if not held:
                continue
            try:
                await self._publish(held, IN_PROGRESS)
            except Exception as exc:
                logger.warning(
                    "taskiq_batching: cannot tell NATS %d held message(s) are "
                    "in progress: %s",
                    len(held),
                    describe(exc),
                )

    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        """Let the read return what it has (it only waits for the callback)."""
        pull = self._pull
        if pull is not None:
            pull.stopping = True
            pull.arrived.set()
        await asyncio.wait({reading})
        return finished_read(reading)

    # --- acks --------------------------------------------------------------

    async def ack(self, handles: Sequence[Any]) -> None:
        """Ack each (a buffered publish), then one flush."""
        await self._settle(handles, ACK)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Nak them: the server delivers them again at once, to any worker."""
        await self._settle([delivery.handle for delivery in deliveries], NAK)

    async def requeue(
        self, given: Sequence[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        """Publish again at the stream's end, then ack (``nats_give_back``)."""
        return await give_back(self.broker, self.ack, given)

    async def _settle(self, handles: Sequence[Unsettled], verdict: bytes) -> None:
        pull = self._pull
        if pull is not None:
            leases = self._leases
            acked = verdict is ACK
            mine = handles
            if leases is not None:
                # Another stream's sequence: its reader remembers it.
                mine = [held for held in handles if not leases.unhold(held, acked)]
            pull.settled(mine, acked)
        await self._publish(handles, verdict)

    async def _publish(self, handles: Sequence[Unsettled], verdict: bytes) -> None:
        replies = [held.reply for held in handles]
        await publish_verdicts(self.broker.client, replies, verdict)

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """No longer held (nor kept alive): redelivered after ``ack_wait``."""
        if self._pull is not None:
            for delivery in deliveries:
                if self._leases is None or not self._leases.unhold(delivery.handle):
                    self._pull.unhold(delivery.handle)

    async def close(self) -> None:
        """Let the request in progress end; nak what was never read; unsubscribe."""
        if self._closed:
            return
        self._closed = True
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        left = [] if self._leases is None else await self._leases.stop()
        if self._moves is not None:
            await self._moves.stop()  # what the stream refused is read again
        if self._pull is not None:
            left += await self._pull.stop()
            if left:
                await self._settle([d.handle for d in left], NAK)

    def for_receiver(self, delivery: Delivery) -> AckableMessage:
        """As taskiq-nats's listener yields it: data and an ack (through here)."""
        held: Unsettled = delivery.handle
        held.handed = True

        async def ack() -> None:
            await self._settle([held], ACK)

        return AckableMessage(data=delivery.data, ack=ack)
