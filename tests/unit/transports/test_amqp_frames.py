"""The AMQP frame reader: a tapped delivery whole, every other frame as aiormq's.

Frames are pamqp's own, marshalled to bytes and fed to an
``asyncio.StreamReader``; what the reader returns is compared with what
aiormq's ``FrameReceiver`` returns for the same bytes.
"""

import asyncio
import datetime
import inspect
from types import SimpleNamespace
from typing import Any

import pamqp.frame
import pytest
from aiormq.connection import Connection, FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from taskiq_batching._compat import amqp_read_frames_with
from taskiq_batching.transports.amqp_frames import Delivered, FrameReader, read_header
from taskiq_batching.transports.amqp_headers import OVERFLOW_LABEL, Overflowed
from taskiq_batching.transports.amqp_tap import DeliveryTap
from taskiq_batching.transports.delivery import SENT_AT_LABEL

pytestmark = pytest.mark.timeout(10)

#: aiormq 7's receiver takes the stream only; aiormq 6's a timeout too (and
#: keeps it: ``_compat.amqp_read_frames_with`` leaves it in place).
AIORMQ_7 = list(inspect.signature(FrameReceiver).parameters) == ["reader"]


def aiormq_receiver(stream: asyncio.StreamReader) -> FrameReceiver:
    args = () if AIORMQ_7 else (None,)
    return FrameReceiver(stream, *args)


def delivery(
    tag: int,
    body: bytes,
    consumer: str = "c",
    channel: int = 1,
    size: int = 0,
    **properties: Any,
) -> bytes:
    """A delivery's frames as the server writes them (bodies of ``size``)."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)] if size else [body]
    frames: list[Any] = [
        Basic.Deliver(
            consumer_tag=consumer, delivery_tag=tag, exchange="x", routing_key="q"
        ),
        ContentHeader(body_size=len(body), properties=Basic.Properties(**properties)),
        *(ContentBody(piece) for piece in pieces if piece),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


def reader_of(data: bytes, channels: dict[int, Any], eof: bool = True) -> FrameReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    if eof:
        stream.feed_eof()
    return FrameReader(stream, channels)


def tapped(number: int = 1, consumers: tuple[str, ...] = ("c",)) -> DeliveryTap:
    tap = DeliveryTap(object(), lambda *_: None)
    for consumer in consumers:
        tap.add(consumer)
    return tap


async def all_frames(get_frame: Any) -> list[tuple[int, int, Any]]:
    frames = []
    while True:
        try:
            frames.append(await get_frame())
        except StopAsyncIteration:
            return frames


def same(ours: tuple[int, int, Any], aiormqs: tuple[int, int, Any]) -> bool:
    """The same bytes, channel and frame (its bytes again, from pamqp)."""
    again = pamqp.frame.marshal(ours[2], ours[1])
    return ours[:2] == aiormqs[:2] and again == pamqp.frame.marshal(*aiormqs[2:0:-1])


async def test_a_tapped_delivery_comes_whole_and_the_rest_as_aiormqs() -> None:
    tap = tapped()
    data = b"".join(
        [
            delivery(1, b"one", headers={"task_name": "t"}),
            pamqp.frame.marshal(Heartbeat(), 0),
            delivery(7, b"other's", consumer="untapped"),
            delivery(2, b"x" * 300, size=100),
            delivery(3, b"", delivery_mode=2),
            delivery(1, b"on channel 2", channel=2),
        ]
    )
    reader = reader_of(data, {1: tap.channel, 2: object()})
    reader.taps[1] = tap
    ours = await all_frames(reader.get_frame)
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    theirs = await all_frames(aiormq_receiver(stream).get_frame)

    whole = [frame for _, _, frame in ours if type(frame) is Delivered]
    assert [(d.tag, d.consumer, d.body, d.sent_at) for d in whole] == [
        (1, "c", b"one", None),
        (2, "c", b"x" * 300, None),
        (3, "c", b"", None),
    ]
    rest = [frame for frame in ours if type(frame[2]) is not Delivered]
    # The heartbeat, the untapped consumer's and channel 2's deliveries.
    assert len(rest) == 1 + 3 + 3
    expected = theirs[3:4] + theirs[4:7] + theirs[-3:]
    assert all(same(a, b) for a, b in zip(rest, expected, strict=True))
    # Each frame counts its bytes: a whole delivery, those of its frames.
    assert sum(weight for weight, _, _ in ours) == len(data)


async def test_a_delivery_cut_by_the_end_of_a_read_comes_as_its_frames() -> None:
    tap = tapped()
    data = delivery(1, b"a" * 50) + delivery(2, b"b" * 50)
    cut = len(delivery(1, b"a" * 50)) + 30  # in the second one's header
    reader = reader_of(data[:cut], {1: tap.channel}, eof=False)
    reader.taps[1] = tap
    first = await reader.get_frame()
    assert type(first[2]) is Delivered
    method = await reader.get_frame()
    assert type(method[2]) is Basic.Deliver
    reader.reader.feed_data(data[cut:])
    reader.reader.feed_eof()
    header, body = await all_frames(reader.get_frame)
    assert type(header[2]) is ContentHeader
    assert body[2].value == b"b" * 50


async def test_a_replaced_channels_deliveries_are_aiormqs() -> None:
    tap = tapped()
    reader = reader_of(delivery(1, b"x"), {1: object()})
    reader.taps[1] = tap  # tapped on a channel closed since
    frames = await all_frames(reader.get_frame)
    assert [type(frame) for _, _, frame in frames] == [
        Basic.Deliver,
        ContentHeader,
        ContentBody,
    ]


def test_the_send_time_is_read_from_the_headers_or_the_timestamp() -> None:
    def header(**properties: Any) -> bytes:
        frame = ContentHeader(body_size=5, properties=Basic.Properties(**properties))
        return pamqp.frame.marshal(frame, 1)

    at = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    assert read_header(header()) == (5, None)
    assert read_header(header(headers={"a": "b"}, content_type="x")) == (5, None)
    assert read_header(header(headers={SENT_AT_LABEL: "12.5"})) == (5, 12.5)
    assert read_header(header(timestamp=at)) == (5, at.timestamp())
    assert read_header(header(headers={SENT_AT_LABEL: "x"}, timestamp=at)) == (
        5,
        at.timestamp(),
    )
    # The key's bytes in a value: pamqp decodes the table, none found.
    assert read_header(header(headers={"k": SENT_AT_LABEL})) == (5, None)
    assert read_header(header(headers={"a": "b"})[:20]) is None
    # A message its full queue refused: its send time says so.
    refused = read_header(header(headers={SENT_AT_LABEL: "12.5", OVERFLOW_LABEL: 1}))
    assert refused == (5, 12.5)
    assert refused is not None
    assert type(refused[1]) is Overflowed


async def test_the_end_of_the_stream_between_frames_or_within_one() -> None:
    data = delivery(1, b"x")
    assert len(await all_frames(reader_of(data, {}).get_frame)) == 3
    with pytest.raises(AMQPConnectionError):
        await all_frames(reader_of(data[:-3], {}).get_frame)


async def test_a_frame_pamqp_cannot_read_fails_the_connection_as_with_aiormq() -> None:
    data = bytearray(delivery(1, b"x"))
    data[-1] = 0  # not the frame end
    tap = tapped()
    reader = reader_of(bytes(data), {1: tap.channel})
    reader.taps[1] = tap
    with pytest.raises(InvalidFrameError):
        await all_frames(reader.get_frame)


async def test_compat_has_a_connections_frames_read_by_the_reader_once() -> None:
    # The installed aiormq's reader task takes its receiver by this name.
    reader_task = Connection._Connection__reader  # type: ignore[attr-defined]
    assert "frame_receiver" in inspect.signature(reader_task).parameters
    seen: list[Any] = []

    async def read(frame_receiver: FrameReceiver) -> None:  # as aiormq's
        async for _, _, frame in frame_receiver:
            seen.append(frame)

    stream = asyncio.StreamReader()
    task = asyncio.create_task(read(aiormq_receiver(stream)))
    await asyncio.sleep(0)  # in aiormq's get_frame, waiting for a frame
    tap = tapped()
    connection = SimpleNamespace(_reader_task=task, channels={1: tap.channel})
    channel = SimpleNamespace(connection=connection, number=1)
    made: list[FrameReader] = []

    def make(stream: asyncio.StreamReader, channels: Any) -> FrameReader:
        made.append(FrameReader(stream, channels))
        return made[-1]

    reader = amqp_read_frames_with(channel, make)
    if not AIORMQ_7:
        assert reader is None
        task.cancel()
        return
    assert reader is not None
    assert amqp_read_frames_with(channel, make) is reader
    assert made == [reader]
    reader.taps[1] = tap
    # aiormq's get_frame reads the frame it waits for; the next come whole.
    stream.feed_data(pamqp.frame.marshal(Heartbeat(), 0) + delivery(1, b"x"))
    stream.feed_eof()
    await asyncio.wait_for(task, 5)
    assert [type(frame) for frame in seen] == [Heartbeat, Delivered]
    assert amqp_read_frames_with(SimpleNamespace(), make) is None
