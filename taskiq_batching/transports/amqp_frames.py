"""A consuming connection's frames read in bulk, a tapped delivery in one piece.

aiormq's connection reader gets each frame with three awaited reads
under a lock, decodes it with pamqp (a content header's property table
field by field) and hands it to its channel: three frames, three
decodings and three hand-overs per delivery, most of the AMQP worker's
CPU. ``FrameReader`` takes over the connection's frame receiver
(``_compat.amqp_read_frames_with``): it reads what the socket has, cuts
the frames out of it, and returns a delivery to a tapped consumer
(``amqp_tap.DeliveryTap``) as one ``Delivered`` frame when its frames
are all there, one after the other (the common case: RabbitMQ writes a
delivery's frames together). Its tap takes it off the channel's queue
like the frames it stands for. Every other frame, a delivery cut by the
end of what was read included, is decoded by pamqp and returned as
aiormq's receiver returns it (the tap then takes the pieces).

A delivery still reaches aiormq's reader (one frame): it notes the time
of each frame for its heartbeat check, and closes channels in order.
"""

import asyncio
import struct
from typing import Any

import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp.exceptions import PAMQPException

from taskiq_batching.transports.amqp_headers import properties_sent_at
from taskiq_batching.transports.delivery import SENT_AT_LABEL

#: Most bytes taken from the socket's buffer at once.
READ_BYTES = 65536
#: type (octet), channel (short), payload size (long); the payload and
#: a closing octet follow.
FRAME_HEAD = struct.Struct(">BHI")
HEAD_BYTES = FRAME_HEAD.size
FRAME_END = 0xCE
METHOD_FRAME, HEADER_FRAME, BODY_FRAME = 1, 2, 3
#: ``basic.deliver``'s class and method ids, the start of its payload.
DELIVER = b"\x00\x3c\x00\x3c"
DELIVERY_TAG = struct.Struct(">Q")
#: A content header's payload: class, weight, body size, property flags.
CONTENT_HEAD = struct.Struct(">HHQH")
TABLE_BYTES = struct.Struct(">I")
#: Property flags (AMQP 0-9-1, ``basic`` class) read here.
CONTENT_TYPE, CONTENT_ENCODING, HEADERS = 0x8000, 0x4000, 0x2000
TIMESTAMP, MORE_FLAGS = 0x0040, 0x0001
#: The send time's key as a field table holds it: its length, its bytes.
SENT_AT_KEY = bytes([len(SENT_AT_LABEL)]) + SENT_AT_LABEL.encode()


class Delivered:
    """A whole delivery to a tapped consumer, as its tap notes it."""

    __slots__ = ("body", "consumer", "sent_at", "tag")

    def __init__(
        self, tag: int, consumer: str, body: bytes, sent_at: float | None
    ) -> None:
        self.tag = tag
        self.consumer = consumer
        self.body = body
        self.sent_at = sent_at


class FrameReader:
    """The frames of one connection, for aiormq's connection reader.

    :param reader: the connection's stream (nothing else reads it).
    :param channels: the connection's channels by number (aiormq's dict).
    """

    def __init__(self, reader: asyncio.StreamReader, channels: Any) -> None:
        self.reader = reader
        self.channels = channels
        #: The tap of each tapped channel, by channel number.
        self.taps: dict[int, Any] = {}
        self._data = b""
        self._at = 0

    async def get_frame(self) -> tuple[int, int, Any]:
        """The next frame: ``(bytes, channel number, frame)`` as aiormq's.

        :raises StopAsyncIteration: the server closed the connection
            between two frames.
        :raises AMQPConnectionError: it did within one, or the socket failed.
        :raises InvalidFrameError: a frame pamqp cannot decode.
        """
        while True:
            frame = self._next()
            if frame is not None:
                return frame
            try:
                data = await self.reader.read(READ_BYTES)
            except OSError as exc:
                raise AMQPConnectionError(
                    f"Server communication error: {exc!r}"
                ) from exc
            left = self._data[self._at :]
            if not data:
                if left:
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed within a frame"
                    )
                raise StopAsyncIteration
            self._data, self._at = left + data, 0

    def _next(self) -> tuple[int, int, Any] | None:
        """The frame at the start of the bytes read, or None if incomplete."""
        data, at = self._data, self._at
        if len(data) - at < HEAD_BYTES:
            return None
        kind, number, size = FRAME_HEAD.unpack_from(data, at)
        end = at + HEAD_BYTES + size + 1
        if len(data) < end:
            return None
        if kind == METHOD_FRAME and data.startswith(DELIVER, at + HEAD_BYTES):
            delivered = self._delivery(number, at, end)
            if delivered is not None:
                return delivered
        self._at = end
        try:
            return pamqp.frame.unmarshal(data[at:end])
        except PAMQPException as exc:
            raise InvalidFrameError(str(exc)) from exc

    def _delivery(self, number: int, at: int, end: int) -> tuple[int, int, Any] | None:
        """A tapped delivery whose frames are all read, in one frame; else None."""
        tap = self.taps.get(number)
        if tap is None or self.channels.get(number) is not tap.channel:
            return None
        data = self._data
        start = at + HEAD_BYTES + len(DELIVER) + 1
        tag_at = start + data[start - 1]
        if tag_at + DELIVERY_TAG.size >= end or data[end - 1] != FRAME_END:
            return None
        consumer = tap.by_tag.get(data[start:tag_at])
        if consumer is None:
            return None
        (tag,) = DELIVERY_TAG.unpack_from(data, tag_at)
        header = self._frame(end, number, HEADER_FRAME)
        if header is None:
            return None
        content = read_header(data[end:header])
        if content is None:
            return None
        left, sent_at = content
        parts = []
        while left > 0:
            body_end = self._frame(header, number, BODY_FRAME)
            if body_end is None or body_end - header - HEAD_BYTES - 1 > left:
                return None
            parts.append(data[header + HEAD_BYTES : body_end - 1])
            left -= body_end - header - HEAD_BYTES - 1
            header = body_end
        body = parts[0] if len(parts) == 1 else b"".join(parts)  # no copy of one
        self._at = header
        return header - at, number, Delivered(tag, consumer, body, sent_at)

    def _frame(self, at: int, number: int, kind: int) -> int | None:
        """The end of a whole frame of this kind and channel at ``at``; else None."""
        data = self._data
        if len(data) - at < HEAD_BYTES:
            return None
        found, on, size = FRAME_HEAD.unpack_from(data, at)
        end = at + HEAD_BYTES + size + 1
        if found != kind or on != number or len(data) < end:
            return None
        return end if data[end - 1] == FRAME_END else None


def read_header(frame: bytes) -> tuple[int, float | None] | None:
    """A content header frame's body size and send time.

    Only the property flags and the lengths before the headers table are
    read, and the table only searched for the send time's key: pamqp
    decodes the frame when a send time may be there.

    :param frame: the whole frame.
    :return: ``(body size, send time or None)``; None when pamqp cannot
        decode it either (aiormq's reader then fails as without this).
    """
    try:
        _, _, size, flags = CONTENT_HEAD.unpack_from(frame, HEAD_BYTES)
        if not flags & (TIMESTAMP | MORE_FLAGS) and not _has_sent_at(frame, flags):
            return size, None
        decoded = pamqp.frame.unmarshal(frame)[2]
    except (PAMQPException, struct.error, IndexError):
        return None
    return size, properties_sent_at(getattr(decoded, "properties", None))


def _has_sent_at(frame: bytes, flags: int) -> bool:
    """Whether the headers table may hold the send time (True if unsure)."""
    if not flags & HEADERS:
        return False
    at = HEAD_BYTES + CONTENT_HEAD.size
    for short_string in (CONTENT_TYPE, CONTENT_ENCODING):
        if flags & short_string:
            at += 1 + frame[at]
    (size,) = TABLE_BYTES.unpack_from(frame, at)
    at += TABLE_BYTES.size
    if at + size > len(frame) - 1:
        return True  # not a table pamqp reads: pamqp says what it is
    return frame.find(SENT_AT_KEY, at, at + size) >= 0
