"""Acking AMQP deliveries many at a time, safely: one tracker per channel.

``basic.ack(tag, multiple=True)`` acks every unacked delivery of the
channel up to ``tag``; acking a tag the server does not hold closes the
channel. ``ChannelAcks`` knows a channel's unsettled tags in order and
settles the longest settled run at its head with one ``multiple`` frame,
the others one frame each, in the order they were decided.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

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
        self.lock = asyncio.Lock()

    def add(self, tag: int, consumer: str) -> bool:
        """Note a delivery; False if this tag was seen already."""
        if tag <= self.seen or tag in self.ahead:
            return False  # never twice on one channel
        out_of_order = bool(self.pending) and tag < next(reversed(self.pending))
        self.pending[tag] = consumer
        if out_of_order:
            self.pending = dict(sorted(self.pending.items()))
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
