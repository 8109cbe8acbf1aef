"""What the AMQP transport keeps per channel: its deliveries' frames, its acks.

``amqp_tap.DeliveryTap`` takes a consumer's deliveries off the channel's
frames as aiormq's connection reader hands them over. ``ChannelAcks``
acks many at a time, safely: ``basic.ack(tag, multiple=True)`` acks every unacked
delivery of the channel up to ``tag``, and acking a tag the server does
not hold closes the channel (every unacked delivery goes back to the
queue); so it knows a channel's unsettled tags in order and settles the
longest settled run at its head with one ``multiple`` frame, the others
one frame each, in the order they were decided (one lock per channel).
``Channels`` holds both for every channel the transport consumes on, and
counts each consumer's deliveries read and not settled.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from taskiq_batching._compat import amqp_read_frames_with, amqp_tap_frames
from taskiq_batching.transports.amqp_frames import FrameReader
from taskiq_batching.transports.amqp_tap import DeliveryTap, Note

logger = logging.getLogger("taskiq_batching")


class ChannelAcks:
    """The unsettled delivery tags of one AMQP channel, in tag order.

    A channel numbers its deliveries 1, 2, 3...; a delivery may reach the
    callback after a later one (another path through tasks), so a
    ``multiple`` frame never goes past a tag below which one is unseen.

    :param channel: the aiormq channel.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        #: tag -> consumer tag, ascending tags.
        self.pending: dict[int, str] = {}
        #: Pending tags the worker has read (the others wait in the list).
        self.read: set[int] = set()
        #: Every tag up to this one has been seen.
        self.seen = 0
        #: Tags seen above a gap.
        self.ahead: set[int] = set()
        #: The highest tag seen.
        self.top = 0
        self.lock = asyncio.Lock()

    def add(self, tag: int, consumer: str) -> bool:
        """Note a delivery; False if this tag was seen already."""
        if tag <= self.seen or tag in self.ahead:
            return False  # never twice on one channel
        self.pending[tag] = consumer
        if tag < self.top:  # out of order: pending stays in tag order
            self.pending = dict(sorted(self.pending.items()))
        else:
            self.top = tag
        if tag == self.seen + 1:
            self.seen = tag
            while self.seen + 1 in self.ahead:
                self.seen += 1
                self.ahead.discard(self.seen)
        else:
            self.ahead.add(tag)
        return True

    def forget(self, tags: Sequence[int]) -> list[str]:
        """The consumer of each read tag, no longer read (settled or lost)."""
        consumers = []
        for tag in tags:
            if tag in self.read:
                self.read.discard(tag)
                consumers.append(self.pending[tag])
        return consumers

    async def settle(self, tags: Sequence[int], nack: bool) -> None:
        """Ack (or nack with requeue) these tags: few frames, in decided order.

        :param tags: unsettled tags of this channel (unknown ones are skipped).
        :param nack: give them back rather than ack them.
        """
        async with self.lock:
            wanted = {tag for tag in tags if tag in self.pending}
            if not wanted:
                return
            run: list[int] = []
            for tag in self.pending:
                if tag not in wanted or tag > self.seen:
                    break
                run.append(tag)
            frames: list[tuple[int, bool]] = []
            if run:
                frames.append((run[-1], len(run) > 1))
            singles = sorted(wanted.difference(run))
            frames.extend((tag, False) for tag in singles)
            for tag in run:
                del self.pending[tag]
            for tag in singles:
                del self.pending[tag]
            channel = self.channel
            last = len(frames) - 1
            for index, (tag, multiple) in enumerate(frames):
                # Frames are queued in order; the last is waited for, so
                # all of them are written when this returns.
                if nack:
                    await channel.basic_nack(
                        tag, multiple=multiple, requeue=True, wait=index == last
                    )
                else:
                    await channel.basic_ack(tag, multiple=multiple, wait=index == last)


class Channels:
    """The trackers and taps of the channels a transport consumes on.

    :param note: called with each delivery a tap takes.
    """

    def __init__(self, note: Note) -> None:
        self.note = note
        self._trackers: dict[int, ChannelAcks] = {}
        self._taps: dict[int, DeliveryTap] = {}
        #: Deliveries read and not settled, by consumer tag.
        self.held: Counter[str] = Counter()

    def tap(self, channel: Any, consumer: str) -> bool:
        """Take the consumer's next deliveries off the channel's frames.

        :return: False when the channel's frames cannot be tapped.
        """
        tap = self._taps.get(id(channel))
        if tap is None or tap.channel is not channel:
            tap = DeliveryTap(channel, self.note)
            if not amqp_tap_frames(channel, tap.take):
                return False
            self._taps[id(channel)] = tap
            reader = amqp_read_frames_with(channel, FrameReader)
            if isinstance(reader, FrameReader):
                reader.taps[channel.number] = tap
        tap.add(consumer)
        return True

    def tracker(self, channel: Any) -> ChannelAcks:
        """The channel's tracker (trackers of closed channels are dropped)."""
        tracker = self._trackers.get(id(channel))
        if tracker is None or tracker.channel is not channel:
            tracker = self._trackers[id(channel)] = ChannelAcks(channel)
            for key, old in list(self._trackers.items()):
                if old.channel.is_closed:
                    del self._trackers[key]
                    self._taps.pop(key, None)
                    self._unhold(old.forget(list(old.read)))
        return tracker

    def pending(self, channel: Any) -> dict[int, str]:
        """A channel's unsettled deliveries (read or not): tag -> consumer tag."""
        tracker = self._trackers.get(id(channel))
        if tracker is None or tracker.channel is not channel:
            return {}
        return tracker.pending

    def untap(self, channel: Any, consumers: Sequence[str]) -> None:
        """Stop taking these (cancelled, settled) consumers' deliveries."""
        tap = self._taps.get(id(channel))
        if tap is not None and tap.channel is channel:
            for consumer in consumers:
                tap.consumers.discard(consumer)
                tap.by_tag.pop(consumer.encode(), None)

    def read(self, channel: Any, tag: int, consumer: str) -> bool:
        """Count a delivery as read; False if its channel is gone."""
        if channel.is_closed:
            return False  # the server gives it again, on the new channel
        self._trackers[id(channel)].read.add(tag)
        self.held[consumer] += 1
        return True

    async def settle(self, handles: Sequence[Any], nack: bool) -> None:
        """Ack (or nack) deliveries, through their channels' trackers.

        :param handles: (channel, tag, consumer) of each; None ones (from a
            ``no_ack`` consumer) are skipped.
        :param nack: give them back to the queue rather than ack them.
        """
        by_channel: dict[int, tuple[Any, list[int]]] = {}
        for handle in handles:
            if handle is not None:
                by_channel.setdefault(id(handle[0]), (handle[0], []))[1].append(
                    handle[1]
                )
        errors: list[BaseException] = []
        lost = 0
        for channel, tags in by_channel.values():
            tracker = self._trackers.get(id(channel))
            if tracker is None or tracker.channel is not channel:
                lost += len(tags)  # a lost channel's, dropped already
                continue
            self._unhold(tracker.forget(tags))
            if channel.is_closed:
                self._trackers.pop(id(channel), None)
                self._unhold(tracker.forget(list(tracker.read)))
                lost += len(tags)
                continue
            try:
                await tracker.settle(tags, nack)
            except Exception as exc:
                errors.append(exc)
        if lost and not nack:
            # A nack of them is moot: the server requeued them with the channel.
            logger.warning(
                "taskiq_batching: %d message(s) finished after their AMQP "
                "channel was lost: their acks cannot be sent, and the server "
                "delivers them again (they run again)",
                lost,
            )
        if errors:
            raise errors[0]

    async def written(self) -> None:
        """Wait until the last frame of every settle so far is written."""
        for tracker in list(self._trackers.values()):
            async with tracker.lock:
                pass

    def _unhold(self, consumers: list[str]) -> None:
        for consumer in consumers:
            self.held[consumer] -= 1
            if self.held[consumer] <= 0:
                del self.held[consumer]
