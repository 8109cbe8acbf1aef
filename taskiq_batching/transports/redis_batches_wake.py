"""Idle workers wait for batched messages on wake streams, one command per wait.

Every send to a batched task's key streams (and every forward) adds an
entry to the task's wake stream (``MAXLEN 1``) in the same ``MULTI`` or
script. The take script returns the wake stream's last id; a worker with
nothing to take blocks (``XREAD BLOCK``) for an entry after it, so a send
between the take and the wait still wakes it, and an idle worker sends
one command per block. On a cluster, tasks' wake streams live in
different slots: one ``XREAD`` per slot, the first to return ends the wait.
"""

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from taskiq_batching.transports.redis_batches_names import slot_of, text_of
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient, cancel

#: Longest a wake read blocks, in ms (below redis-py's socket timeout).
MAX_IDLE_BLOCK_MS = 2000


class Wakes:
    """The wake streams a worker waits on, and the last id seen of each.

    :param client: the transport's client.
    """

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        #: Per wake stream, the last id seen: a wait is for a newer one.
        self.seen: dict[str, Any] = {}

    async def wait(self, wakes: Sequence[str], timeout_seconds: float) -> None:
        """Block until one of these wake streams gets a new entry, or the timeout.

        :param wakes: the wake streams.
        :param timeout_seconds: the longest wait (capped at 2 s).
        """
        block_ms = max(1, min(int(timeout_seconds * 1000), MAX_IDLE_BLOCK_MS))
        since = {wake: self.seen.get(wake, "0-0") for wake in wakes}
        groups: list[dict[str, Any]] = [since]
        if self.client.cluster:
            by_slot: defaultdict[int, dict[str, Any]] = defaultdict(dict)
            for wake, last in since.items():
                by_slot[slot_of(wake)][wake] = last
            groups = list(by_slot.values())
        redis = self.client.redis
        try:
            if len(groups) == 1:
                self._read(await redis.xread(groups[0], count=1, block=block_ms))
                return
            await self._first_of(groups, block_ms)
        except TRANSIENT as exc:
            await self.client.pause_after(exc, "waiting for batched messages")

    async def _first_of(self, groups: list[dict[str, Any]], block_ms: int) -> None:
        redis = self.client.redis
        reads = [
            asyncio.ensure_future(redis.xread(group, count=1, block=block_ms))
            for group in groups
        ]
        try:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in done:
                self._read(read.result())
        finally:
            for read in reads:
                await cancel(read)

    def _read(self, reply: Any) -> None:
        """Remember the ids read, so that the next wait is for newer ones.

        ``XREAD``'s reply: ``[[stream, entries]]`` (RESP2) or ``{stream:
        [entries]}`` (RESP3, one list more), each entry ``(id, fields)``.
        """
        if not reply:
            return
        streams = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in streams:
            found = entries
            while found and not isinstance(found[-1][0], (bytes, str)):
                found = found[-1]
            if found:
                self.seen[text_of(stream)] = found[-1][0]
