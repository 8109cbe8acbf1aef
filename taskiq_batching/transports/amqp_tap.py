"""A consumer's deliveries taken off its AMQP channel's frames, as they come.

aiormq hands each frame of a channel to the channel's reader, which
makes an object and a task per delivery. The tap (``DeliveryTap``) sees
the frames first and takes a tapped consumer's deliveries whole, noting
each at once; ``amqp_acks.Channels`` keeps one tap per channel the
transport consumes on.
"""

import logging
from collections.abc import Callable
from typing import Any

from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from taskiq_batching.transports.amqp_frames import Delivered
from taskiq_batching.transports.amqp_headers import properties_sent_at

logger = logging.getLogger("taskiq_batching")

#: Called with (channel, delivery tag, consumer tag, body, send time in
#: epoch seconds or None) per delivery.
Note = Callable[[Any, int, str, bytes, float | None], None]


class DeliveryTap:
    """Collects the deliveries of some consumers from a channel's frames.

    aiormq's connection reader puts each frame of a channel on the
    channel's queue; the channel's reader takes them off and, for a
    delivery (``Basic.Deliver``, a content header, body frames), builds a
    ``DeliveredMessage`` and starts a task that calls the consumer's
    callback: three queue hops, a task and its done callbacks per message.
    The tap sees each frame first (``_compat.amqp_tap_frames``): the frames
    of a delivery to one of its consumers are taken (a channel sends a
    delivery's frames one after the other) and the delivery noted at once;
    any other frame is queued as before. A delivery the connection's
    ``amqp_frames.FrameReader`` read whole comes as one ``Delivered``.

    :param channel: the aiormq channel.
    :param note: called with each delivery taken.
    """

    def __init__(self, channel: Any, note: Note) -> None:
        self.channel = channel
        self.note = note
        #: Consumer tags whose deliveries are taken.
        self.consumers: set[str] = set()
        #: The same, by their bytes on the wire (``FrameReader``).
        self.by_tag: dict[bytes, str] = {}
        self._deliver: Any = None
        self._left = 0
        self._sent_at: float | None = None
        self._parts: list[bytes] = []

    def take(self, frame: Any) -> bool:
        """Take a frame of a tapped delivery; False for any other frame."""
        deliver = self._deliver
        if deliver is None:
            if type(frame) is Delivered:
                self._noted(frame.tag, frame.consumer, frame.body, frame.sent_at)
                return True
            if type(frame) is Basic.Deliver and frame.consumer_tag in self.consumers:
                self._deliver = frame
                self._left = -1  # its content header comes next
                return True
            return False
        kind = type(frame)
        if kind is ContentHeader and self._left < 0:
            self._left = frame.body_size
            self._sent_at = properties_sent_at(frame.properties)
        elif kind is ContentBody and self._left > 0:
            self._parts.append(frame.value)
            self._left -= len(frame.value)
        else:  # cannot happen on a channel; let aiormq see it
            logger.warning("taskiq_batching: unexpected AMQP frame %r", frame)
            self._deliver = None
            self._parts = []
            return False
        if self._left == 0:
            parts, self._parts = self._parts, []
            self._deliver = None
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._noted(deliver.delivery_tag, deliver.consumer_tag, body, self._sent_at)
        return True

    def add(self, consumer: str) -> None:
        """Take this consumer's deliveries too."""
        self.consumers.add(consumer)
        self.by_tag[consumer.encode()] = consumer

    def _noted(
        self, tag: int, consumer: str, body: bytes, sent_at: float | None
    ) -> None:
        try:
            self.note(self.channel, tag, consumer, body, sent_at)
        except Exception:
            # Not aiormq's reader's to fail: the delivery stays unacked
            # and comes again when the channel closes.
            logger.exception("taskiq_batching: cannot note an AMQP delivery")
