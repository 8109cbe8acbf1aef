"""The AMQP transport's per-channel parts: the frame tap, the acks, the order.

On fake channels: the frames are pamqp's own objects, handed over as
aiormq's connection reader hands them; the acks and nacks a channel is
asked to send are recorded.
"""

import asyncio
import logging
from typing import Any

import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic, Channel
from pamqp.header import ContentHeader

from taskiq_batching import _compat
from taskiq_batching.transports.amqp_acks import ChannelAcks, Channels
from taskiq_batching.transports.amqp_frames import Delivered
from taskiq_batching.transports.amqp_tap import DeliveryTap

pytestmark = pytest.mark.timeout(10)


class FakeChannel:
    """Records ``basic_ack`` / ``basic_nack`` calls; has aiormq's frame queue."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.sent: list[tuple[str, int, bool]] = []
        self.is_closed = False

    async def basic_ack(
        self, tag: int, multiple: bool = False, wait: bool = True
    ) -> None:
        self.sent.append(("ack", tag, multiple))

    async def basic_nack(
        self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        self.sent.append(("nack", tag, multiple))


def deliver(tag: int, consumer: str = "c") -> Basic.Deliver:
    return Basic.Deliver(consumer_tag=consumer, delivery_tag=tag, exchange="x")


def frames(tag: int, body: bytes, consumer: str = "c", size: int = 0) -> list[Any]:
    """A delivery's frames: method, header, body split in ``size`` pieces."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)] if size else [body]
    return [
        deliver(tag, consumer),
        ContentHeader(body_size=len(body)),
        *(ContentBody(piece) for piece in pieces if piece),
    ]


class Noted:
    def __init__(self) -> None:
        self.deliveries: list[tuple[int, str, bytes]] = []
        self.sent_at: list[float | None] = []

    def __call__(
        self, channel: Any, tag: int, consumer: str, body: bytes, sent_at: float | None
    ) -> None:
        self.deliveries.append((tag, consumer, body))
        self.sent_at.append(sent_at)


def test_the_tap_takes_its_consumers_deliveries_whole() -> None:
    noted = Noted()
    tap = DeliveryTap(object(), noted)
    tap.consumers.add("c")
    stream = [
        *frames(1, b"one"),
        *frames(2, b"x" * 10, size=4),  # body frames of 4, 4 and 2 bytes
        *frames(3, b""),  # no body frame at all
        *frames(4, b"other", consumer="not-tapped"),
        Basic.CancelOk(consumer_tag="c"),
    ]
    taken = [tap.take(frame) for frame in stream]
    assert taken == [True] * 10 + [False] * 4
    assert noted.deliveries == [(1, "c", b"one"), (2, "c", b"x" * 10), (3, "c", b"")]


def test_a_delivery_read_whole_is_noted_at_once() -> None:
    noted = Noted()
    tap = DeliveryTap(object(), noted)
    tap.add("c")
    assert tap.take(Delivered(5, "c", b"body", 12.5))
    assert tap.take(frames(6, b"x")[0])  # the next one, frame by frame
    assert noted.deliveries == [(5, "c", b"body")]
    assert noted.sent_at == [12.5]


def test_an_unexpected_frame_in_a_delivery_is_let_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    noted = Noted()
    tap = DeliveryTap(object(), noted)
    tap.consumers.add("c")
    assert tap.take(deliver(1))
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        assert not tap.take(Channel.Close(reply_code=406, reply_text="x"))
    assert "unexpected AMQP frame" in caplog.text
    assert [tap.take(frame) for frame in frames(2, b"two")] == [True, True, True]
    assert noted.deliveries == [(2, "c", b"two")]


async def test_compat_shows_frames_first_and_queues_the_rest() -> None:
    channel = FakeChannel()
    seen: list[Any] = []

    def take(frame: Any) -> bool:
        seen.append(frame)
        return bool(frame == "mine")

    assert _compat.amqp_tap_frames(channel, take)
    assert not _compat.amqp_tap_frames(channel, take)  # once per channel
    assert not _compat.amqp_tap_frames(object(), take)  # no frame queue
    await channel.frames.put((1, "mine"))
    await channel.frames.put((1, "theirs"))
    assert seen == ["mine", "theirs"]
    assert channel.frames.get_nowait() == (1, "theirs")
    assert channel.frames.empty()


async def test_a_contiguous_head_is_acked_with_one_multiple_frame() -> None:
    channel = FakeChannel()
    acks = ChannelAcks(channel)
    for tag in range(1, 11):
        assert acks.add(tag, "c")
    assert not acks.add(3, "c")  # never twice
    await acks.settle([4, 5], nack=False)  # behind 1-3: one frame each
    await acks.settle([1, 2, 3, 6], nack=False)  # the head 1-6: one frame
    await acks.settle([8, 9], nack=True)  # behind 7: nacked one by one
    await acks.settle([7, 10], nack=False)  # 7 heads what is left
    assert channel.sent == [
        ("ack", 4, False),
        ("ack", 5, False),
        ("ack", 6, True),
        ("nack", 8, False),
        ("nack", 9, False),
        ("ack", 10, True),
    ]
    assert acks.pending == {}


async def test_no_multiple_frame_reaches_past_a_delivery_not_seen_yet() -> None:
    channel = FakeChannel()
    acks = ChannelAcks(channel)
    for tag in (1, 2, 4, 5):  # 3 is on its way (another path)
        acks.add(tag, "c")
    await acks.settle([1, 2, 4, 5], nack=False)
    assert channel.sent == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False)]
    acks.add(3, "c")  # late: pending stays in tag order
    acks.add(6, "c")
    await acks.settle([3, 6], nack=False)
    assert channel.sent[-1] == ("ack", 6, True)


async def test_channels_count_reads_per_consumer_and_skip_a_lost_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    noted = Noted()
    channels = Channels(noted)
    channel = FakeChannel()
    for tag, consumer in ((1, "a"), (2, "b"), (3, "a")):
        channels.tracker(channel).add(tag, consumer)
        assert channels.read(channel, tag, consumer)
    assert channels.held == {"a": 2, "b": 1}
    await channels.settle([(channel, 1, "a"), None], nack=False)
    assert channels.held == {"a": 1, "b": 1}
    channel.is_closed = True
    assert not channels.read(channel, 4, "a")
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        await channels.settle([(channel, 2, "b")], nack=False)
    assert "channel was lost" in caplog.text
    assert channels.held == {}  # every read delivery of the lost channel
    assert channel.sent == [("ack", 1, False)]
    await channels.written()


async def test_acks_of_a_channel_replaced_already_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channels = Channels(Noted())
    old = FakeChannel()
    channels.tracker(old).add(1, "a")
    assert channels.read(old, 1, "a")
    old.is_closed = True
    channels.tracker(FakeChannel())  # the new channel's first delivery
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        await channels.settle([(old, 1, "a")], nack=True)
        assert caplog.text == ""  # a nack is moot: the server requeued it
        await channels.settle([(old, 1, "a")], nack=False)
    assert "1 message(s) finished after their AMQP channel was lost" in caplog.text
    assert old.sent == []


async def test_a_tapped_channel_notes_deliveries_through_the_channels() -> None:
    noted = Noted()
    channels = Channels(noted)
    channel = FakeChannel()
    assert channels.tap(channel, "c")
    assert channels.tap(channel, "d")  # a second consumer, same tap
    for frame in [*frames(1, b"1"), *frames(2, b"2", consumer="d")]:
        await channel.frames.put((1, frame))
    assert noted.deliveries == [(1, "c", b"1"), (2, "d", b"2")]
    assert channel.frames.empty()


def test_a_failing_note_is_logged_not_raised_into_aiormqs_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def note(
        channel: Any, tag: int, consumer: str, body: bytes, sent_at: float | None
    ) -> None:
        calls.append(tag)
        if tag == 1:
            raise RuntimeError("bug")

    tap = DeliveryTap(object(), note)
    tap.consumers.add("c")
    with caplog.at_level(logging.ERROR, logger="taskiq_batching"):
        assert all(tap.take(frame) for frame in [*frames(1, b"1"), *frames(2, b"2")])
    assert calls == [1, 2]
    assert "cannot note an AMQP delivery" in caplog.text


def test_the_tap_notes_each_deliverys_send_time_from_its_header() -> None:
    noted = Noted()
    tap = DeliveryTap(object(), noted)
    tap.consumers.add("c")
    stamped = Basic.Properties(headers={"batch_sent_at": 1700000000.25})
    stream = [
        deliver(1),
        ContentHeader(body_size=1, properties=stamped),
        ContentBody(b"1"),
        *frames(2, b"2"),  # no header: its send time is unknown
    ]
    assert all(tap.take(frame) for frame in stream)
    assert noted.sent_at == [1700000000.25, None]
