"""taskiq-aio-pika's broker, consumed in chunks and acked many at a time.

For an ``AioPikaBroker`` whose ``listen()`` is the stock one, the worker
consumes the same queues itself (the same ``qos``, declarations and
consumer arguments; every queue but the delay queue) with aio-pika's
``queue.consume(callback)``, so that a robust queue consumes again after
a reconnection. Deliveries are taken off the channel's frames as
aiormq's reader hands them over (``amqp_tap.DeliveryTap``: no object or
task per message); a consumer is named and tapped before it starts
(``amqp_consumers.py``), and a new channel's first delivery after a
reconnection comes through aio-pika's callback, which taps it. They wait
in ``amqp_inbox.Inbox`` (a late one in tag order); ``read`` takes up to
its limit at once. A ``no_ack`` consumer's deliveries are lost if the
worker dies, as with the broker's own listener. Acks and nacks go
through one tracker per channel (``amqp_acks.ChannelAcks``), for the
Receiver's deliveries too.

``qos`` is a prefetch count with ``global=False``: RabbitMQ applies it to
each consumer separately. ``outstanding`` is that of the fullest
consumer. With ``wait_in_broker=True`` each batched task's own queue is
consumed too, with its own prefetch (``amqp_batches.py``).

Stopping never cancels a task inside an RPC (a cancelled ``basic.cancel``
closes the channel and requeues everything): a read waits on an event
only, and the consumers are cancelled once, shielded, as soon as the
worker starts to stop (``stop_consuming``: the next messages go to other
workers while this one finishes what it holds). Deliveries received but
never read are given back (``basic.nack`` with ``requeue``), and the last
ack frame is waited for before ``close`` returns.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from taskiq import AsyncBroker, BrokerMessage
from taskiq_aio_pika import AioPikaBroker

from taskiq_batching._compat import amqp_prefetch
from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.amqp_batches import AmqpBatches
from taskiq_batching.transports.amqp_consumers import Consumers
from taskiq_batching.transports.amqp_give_back import give_back
from taskiq_batching.transports.amqp_inbox import Inbox
from taskiq_batching.transports.amqp_sender import sender_for as sender_for
from taskiq_batching.transports.base import finished_read
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.generic import GenericTransport

logger = logging.getLogger("taskiq_batching")

#: Batched messages carry their send time as a header (``stamps_sent_at``):
#: RabbitMQ keeps none the consumer sees.
STAMPS_SENT_AT = True

#: Longest a read waits for a delivery before it returns none, in seconds
#: (the worker then checks its timers and reads again).
IDLE_WAIT = 1.0

#: Longest a stop waits for a read still starting the consumers, in seconds.
START_GRACE = 10.0

#: A delivery's handle: (aiormq channel, delivery tag, consumer tag).
Handle = tuple[Any, int, str]


def transport_for(
    broker: AsyncBroker, listen: Any = None, wait_in_broker: bool | None = None
) -> "AmqpTransport | GenericTransport | None":
    """The AMQP transport, for an ``AioPikaBroker`` that listens as shipped.

    :param broker: any broker.
    :param listen: its own ``listen``.
    :param wait_in_broker: True: each batched task's messages wait in a
        single-active-consumer queue of their own (``amqp_batches.py``).
    :return: the transport; the broker's own listener (with the channel's
        prefetch known) when its class overrides ``listen``; None for
        other brokers.
    """
    if not isinstance(broker, AioPikaBroker):
        return None
    if type(broker).listen is AioPikaBroker.listen:
        return AmqpTransport(broker, wait_in_broker is True)
    return GenericTransport(broker, listen, prefetch=amqp_prefetch(broker))


class AmqpTransport(Consumer[Handle]):
    """Consumes, acks and gives back for a taskiq-aio-pika broker.

    :param broker: an ``AioPikaBroker`` with the stock ``listen``.
    :param wait_in_broker: batched tasks wait in queues of their own
        (``amqp_batches.py``): ``forwarder`` is set. The producer's side
        is ``amqp_sender.AmqpSender`` (``sender_for``).
    """

    name = "amqp"
    #: The task queues (``amqp_batches.py``) with ``wait_in_broker``.
    forwarder: AmqpBatches | None

    def __init__(self, broker: AioPikaBroker, wait_in_broker: bool = False) -> None:
        self.broker: AioPikaBroker = broker
        self.prefetch = amqp_prefetch(broker)
        self._inbox = Inbox()
        self._channels = channels = self._inbox.channels
        waiting = (
            AmqpBatches(
                broker,
                self.ack,
                release=self.release,
                pending=channels.pending,
                untap=channels.untap,
            )
            if wait_in_broker
            else None
        )
        self._waiting = self.forwarder = waiting
        if waiting is not None:
            waiting.handovers.stopping = lambda: self._stopping
        self._consumers = Consumers(self._inbox)
        self._started = False
        self._stopping = False
        self._cancelling: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    @property
    def outstanding(self) -> int:
        """Deliveries read and unsettled, of the consumer that has the most."""
        if self._waiting is not None:
            return self._waiting.outstanding(self._channels.held, self.prefetch)
        return max(self._channels.held.values(), default=0)

    def passed_on(self) -> list[str]:
        """Batched tasks whose queue's role this worker passed on (``base``)."""
        if self._waiting is None:
            return []
        return self._waiting.handovers.passed_on()

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Note the batched tasks (their queues are consumed with the main one)."""
        if self._waiting is not None:
            self._waiting.configure(specs)

    # --- consuming -----------------------------------------------------------

    async def _start(self) -> None:
        channel = self.broker.read_channel
        if channel is None:
            raise RuntimeError("Call startup before starting listening.")
        if self.prefetch is not None:
            await channel.set_qos(prefetch_count=self.prefetch)
        if not await self._consumers.start(self.broker, channel):
            self.acknowledges = False  # a no_ack consumer's are not acked
        if self._waiting is not None:
            await self._waiting.start(self._consumers.consume, self._consumers.forget)
        self._started = True

    async def read(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries received (see ``Transport.read``)."""
        if not self._started:
            await self._start()
        while not self._stopping:
            if self._inbox.unread:
                if self._waiting is not None:  # a task's backlog arriving
                    await self._waiting.handovers.burst(self._inbox, limit)
                chunk = self._inbox.take(limit)
                if chunk:
                    self._check()
                    return chunk
                continue
            self._inbox.arrived.clear()
            try:
                await asyncio.wait_for(self._inbox.arrived.wait(), IDLE_WAIT)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                return []
        return []

    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        """Let the read return (not cancelled: it may be inside an RPC).

        A read still starting the consumers (RPCs without a timeout) is
        cancelled after ``START_GRACE`` seconds: nothing was delivered to
        it yet, and a channel closed by the cancelled RPC gives back
        whatever it had.
        """
        self._stopping = True
        self._inbox.arrived.set()
        deadline = asyncio.get_running_loop().time() + START_GRACE
        while not reading.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 and not self._started:
                reading.cancel()
                left = START_GRACE
            try:
                await asyncio.wait({reading}, timeout=max(left, 0.1))
            except asyncio.CancelledError:
                continue
        return finished_read(reading)

    # --- acks ------------------------------------------------------------------

    async def ack(self, handles: Sequence[Any]) -> None:
        """Ack through each channel's tracker (see the module's docstring)."""
        await self._channels.settle(handles, nack=False)
        self._check()

    def _check(self) -> None:
        # A task's consumer holding its whole prefetch passes its role on.
        if self._waiting is not None:
            self._waiting.check()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give them back to the queue (``basic.nack`` with requeue)."""
        await self._channels.settle([d.handle for d in deliveries], nack=True)

    async def requeue(
        self, given: Sequence[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        """Publish again to their queue, then ack (``amqp_give_back``)."""
        consumers = self._consumers.listed
        return await give_back(self.broker, consumers, self.lost, self.ack, given)

    # --- stopping ----------------------------------------------------------------

    def lost(self, delivery: Delivery) -> bool:
        """Whether the server took a delivery back: its channel closed.

        A closed channel's unacked deliveries are requeued at once, and
        come again on the new channel: the worker drops this one from a
        batch that has not started (``Batcher.drop_lost``).

        :param delivery: a delivery read from this transport.
        :return: True when its channel is closed.
        """
        handle = delivery.handle
        return handle is not None and bool(handle[0].is_closed)

    async def stop_consuming(self) -> None:
        """Cancel the consumers once and give back what was not read.

        Called as the worker starts to stop, before it finishes what it
        holds: RabbitMQ then delivers what comes next to the other workers
        at once (a task queue's next single active consumer), not to this
        one until it has drained. Acks of what it holds still go through
        their channels.
        """
        if self._cancelling is None:
            self._cancelling = asyncio.ensure_future(self._cancel())
        await asyncio.shield(self._cancelling)

    async def close(self) -> None:
        """Cancel the consumers (once), give back what was not read, flush acks."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self.stop_consuming()
        if self._waiting is not None:
            # Forwarded originals are acked once their copies are confirmed.
            await self._waiting.settled()
        await self._channels.written()
        if self._waiting is not None:
            await self._waiting.close()

    async def _cancel(self) -> None:
        self._stopping = True
        self._inbox.arrived.set()
        if self._waiting is not None:
            # Then the listed consumers are the last word (amqp_handover.py).
            await self._waiting.handovers.settled()
        # Once, shielded by close(); bounded for a dead connection.
        await self._consumers.cancel(START_GRACE)
        # Deliveries that came through aio-pika before CancelOk (a channel
        # not tapped yet) reach the callback through two tasks each.
        for _ in range(3):
            await asyncio.sleep(0)
        unread = self._inbox.take_all()
        try:
            await self._channels.settle([d.handle for d in unread], nack=True)
        except Exception as exc:
            logger.warning(
                "taskiq_batching: cannot give %d unread message(s) back (the "
                "server does when the channel closes): %s",
                len(unread),
                describe(exc),
            )
