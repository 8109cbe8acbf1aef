"""The AMQP inbox: deliveries received and not read yet, in order.

Deliveries are noted as aiormq's reader hands them over (tapped frames)
or, for a channel not tapped yet, through aio-pika's callback, which may
come later than deliveries tapped after it: such a late one takes its
place in tag order. Each delivery is noted once per channel (its
channel's tracker, ``amqp_acks.Channels``); a read takes a chunk at once,
skipping deliveries of a channel that closed meanwhile. The inbox taps a
consumer's channel (``tap``) and is aio-pika's consumer callback
(``on_message``) for what comes before the tap.
"""

import asyncio
from collections import deque
from typing import Any

from taskiq_batching._compat import amqp_take_deliveries
from taskiq_batching.transports.amqp_acks import Channels
from taskiq_batching.transports.amqp_headers import properties_sent_at, sent_at_of
from taskiq_batching.transports.delivery import Delivery


class Inbox:
    """Deliveries received, waiting to be read; their channels' trackers."""

    def __init__(self) -> None:
        self.channels = Channels(self.note)
        self.unread: deque[Delivery] = deque()
        #: Set when a delivery is noted.
        self.arrived = asyncio.Event()
        #: Consumers with ``no_ack``: the server forgets what they deliver.
        self.no_ack: set[str] = set()

    def note(
        self,
        channel: Any,
        tag: int,
        consumer: str,
        body: bytes,
        sent_at: float | None = None,
    ) -> None:
        """Keep one delivery, in its place.

        :param channel: its aiormq channel.
        :param tag: its delivery tag.
        :param consumer: its consumer tag.
        :param body: its bytes.
        :param sent_at: its send time (``amqp_headers``), if it carries one.
        """
        if consumer in self.no_ack:
            self.unread.append(Delivery(body, None, sent_at=sent_at))
            self.arrived.set()
            return
        tracker = self.channels.tracker(channel)
        late = tag < tracker.top
        if not tracker.add(tag, consumer):
            return  # never twice on one channel
        delivery = Delivery(body, (channel, tag, consumer), sent_at=sent_at)
        self.arrived.set()
        if late:  # came the long way (through aio-pika): its place in the list
            for index, other in enumerate(self.unread):
                handle = other.handle
                if handle is not None and handle[0] is channel and handle[1] > tag:
                    self.unread.insert(index, delivery)
                    return
        self.unread.append(delivery)

    def take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries, oldest first, counted as read.

        :param limit: the most taken.
        :return: them (a closed channel's are dropped: the server requeued them).
        """
        chunk: list[Delivery] = []
        unread, read = self.unread, self.channels.read
        while unread and len(chunk) < limit:
            delivery = unread.popleft()
            if delivery.handle is None or read(*delivery.handle):
                chunk.append(delivery)
        return chunk

    def take_all(self) -> list[Delivery]:
        """Every delivery not read (a stop gives them back).

        :return: them, in order.
        """
        unread = list(self.unread)
        self.unread.clear()
        return unread

    def tap(self, channel: Any, consumer: str) -> None:
        """Note a consumer's deliveries as aiormq's reader hands them over.

        :param channel: its aiormq channel.
        :param consumer: its consumer tag.
        """
        if not self.channels.tap(channel, consumer):
            # Not aiormq 7's frame queue: its per-delivery callback then.
            amqp_take_deliveries(channel, consumer, self._on_delivered)

    async def on_message(self, message: Any) -> None:
        """aio-pika's consumer callback: a delivery on a channel not tapped yet.

        The channel's next deliveries are tapped; a robust queue brings
        this callback back after a reconnection (a new channel).

        :param message: aio-pika's incoming message.
        """
        channel = message.channel
        consumer = str(message.consumer_tag)
        sent_at = sent_at_of(message.headers, message.timestamp)
        self.note(channel, int(message.delivery_tag), consumer, message.body, sent_at)
        self.tap(channel, consumer)

    async def _on_delivered(self, message: Any) -> None:
        """The callback aiormq calls when frames cannot be tapped."""
        delivery = message.delivery
        self.note(
            message.channel,
            delivery.delivery_tag,
            delivery.consumer_tag,
            message.body,
            properties_sent_at(getattr(message.header, "properties", None)),
        )
