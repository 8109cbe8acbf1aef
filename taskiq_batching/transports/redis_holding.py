"""What a stream consumer holds stays its own: fresh entries, and a lease on its name.

A consumer group gives an entry idle longer than the broker's
``idle_timeout`` to any consumer that sweeps for it (``XAUTOCLAIM``):
that is how a dead worker's entries are taken over. A live worker holds
entries far longer than that (buffered, parked behind a running batch,
in a batch, with taskiq's Receiver), so every ``interval`` (at most half
of ``idle_timeout``) it resets their idle time: ``XCLAIM ... 0 <ids>
JUSTID`` to itself, one per stream (per ``REFRESH_CHUNK`` entries), all
in one round trip with the lease's renewal. A worker that dies stops
refreshing: its entries become claimable ``idle_timeout`` after their
last refresh.

The refresh claims every entry the worker still holds, without asking
whether a sibling claimed one meanwhile: a sibling only can when this
worker's event loop stalled for over ``idle_timeout`` minus ``interval``,
and both then run it anyway; the entry then changes hands at each
refresh until one of them acks it. Nothing is lost, and no check costs
a round trip (or a script, which some Redis users may not run).

Processes sharing a consumer name are one consumer to Redis: each would
take the other's pending entries for its own (reading them back when it
stops, refreshing them). A worker therefore holds a lease on its name (a
key holding a token of its process), renewed at each refresh, expiring
after ``LEASE_INTERVALS`` intervals, deleted when it stops. A worker that
finds the lease held waits for it to expire (the holder died: a restart
under the same name) and refuses to start when it is renewed meanwhile
(the holder lives).

Each tick also publishes how far this worker has read each stream (the
id of the last entry it read, in key ``mark_key``), when that changed
since the last tick: a worker that has read nothing yet and finds the
consumer group lost creates it again there (``redis_stream``).
"""

import asyncio
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from taskiq_batching.error_texts import describe
from taskiq_batching.errors import ConsumerNameInUseError
from taskiq_batching.transports.redis_common import cancel

logger = logging.getLogger("taskiq_batching")

#: Entry ids claimed by one refreshing ``XCLAIM``.
REFRESH_CHUNK = 1000
#: A lease not renewed for this many refresh intervals expires.
LEASE_INTERVALS = 3
#: Seconds waited past a lease's expiry before its holder is taken to live.
LEASE_MARGIN = 0.5

Entry = tuple[str, bytes]


def lease_key(stream: str, group: str, consumer: str) -> str:
    """The key of the lease on a consumer name.

    :param stream: the broker's stream (its first, when it reads several).
    :param group: the consumer group.
    :param consumer: the consumer name.
    :return: the key.
    """
    return f"{stream}:taskiq-batching-consumer:{group}:{consumer}"


def mark_key(stream: str, group: str) -> str:
    """The key holding how far a group's workers have read a stream.

    :param stream: the stream.
    :param group: the consumer group.
    :return: the key (its value: an entry id some worker of the group read).
    """
    return f"{stream}:taskiq-batching-last:{group}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Holding:
    """A consumer's lease on its name and the refresh of the entries it holds.

    :param redis: the client.
    :param group: the consumer group.
    :param consumer: this consumer.
    :param streams: the streams it reads (the lease is on the first's).
    :param interval: seconds between two refreshes.
    :param held: the entries this consumer holds now.
    :param refresh: whether entries need refreshing (False when nobody
        claims idle entries: the broker has no ``idle_timeout``).
    :param marks: per stream, the id of the last entry this consumer read.
    """

    def __init__(
        self,
        redis: Any,
        group: str,
        consumer: str,
        streams: Sequence[str],
        interval: float,
        held: Callable[[], Collection[Entry]],
        refresh: bool = True,
        marks: Callable[[], Mapping[str, bytes]] = dict,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.stream = streams[0]
        self.interval = interval
        self.held = held
        self.refresh = refresh
        self.marks = marks
        #: Per stream, the mark this consumer published last.
        self._marked: dict[str, bytes] = {}
        self.key = lease_key(self.stream, group, consumer)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(int(LEASE_INTERVALS * interval * 1000), 1)
        #: Whether this process holds the lease (it may read).
        self.leased = False
        self._keeping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Take the lease (waiting for a dead holder's to expire), then keep fresh.

        :raises ConsumerNameInUseError: another live process holds the name.
        """
        if self.leased:
            return
        await self._take_lease()
        self.leased = True
        self._keeping = asyncio.ensure_future(self._keep())

    async def _take_lease(self) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while not await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            found = await self.redis.get(self.key)
            left = int(await self.redis.pttl(self.key))
            if found is None:  # expired meanwhile
                continue
            holder = _text(found)
            if holder == self.token:  # set by an attempt cancelled meanwhile
                return
            now = loop.time()
            if deadline is None:
                deadline = now + max(left, 0) / 1000 + LEASE_MARGIN
                logger.warning(
                    "taskiq_batching: consumer_name=%r is held by %s; waiting up "
                    "to %.1f s for it to expire (a process that died) before "
                    "reading",
                    self.consumer,
                    holder,
                    deadline - now,
                )
            if left == -1 or now >= deadline:  # renewed: its holder lives
                raise ConsumerNameInUseError(
                    self.consumer, self.stream, self.group, holder
                )
            await asyncio.sleep(max(min(left / 1000, deadline - now), 0.01))

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:
                logger.warning(
                    "taskiq_batching: refreshing the %d entries consumer %s holds "
                    "failed (%s); trying again in %g s",
                    len(self.held()),
                    self.consumer,
                    describe(exc),
                    self.interval,
                )

    async def tick(self) -> int:
        """Renew the lease, reset the idle time of every entry held, publish marks.

        All at once; a mark only when this consumer read further since.

        :return: the commands sent (in one round trip).
        """
        by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
        if self.refresh:
            for stream, entry_id in list(self.held()):
                by_stream[stream].append(entry_id)
        marks = self._new_marks()
        sent = 1 + len(marks)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, self.token, px=self.ttl_ms, get=True)
            for stream, entry_id in marks.items():
                pipe.set(mark_key(stream, self.group), entry_id)
            for stream, ids in by_stream.items():
                for start in range(0, len(ids), REFRESH_CHUNK):
                    pipe.xclaim(
                        stream,
                        self.group,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=ids[start : start + REFRESH_CHUNK],
                        justid=True,
                    )
                    sent += 1
            previous, *_ = await pipe.execute()
        self._marked.update(marks)
        if previous is not None and _text(previous) != self.token:
            logger.error(
                "taskiq_batching: consumer_name=%r was taken by another process "
                "(%s) while this one did not renew it (its event loop stalled "
                "for over %.1f s?): both may run the same messages",
                self.consumer,
                _text(previous),
                self.ttl_ms / 1000,
            )
        return sent

    def _new_marks(self) -> dict[str, bytes]:
        """Per stream, the last entry read, where it moved since it was published."""
        return {
            stream: entry_id
            for stream, entry_id in self.marks().items()
            if self._marked.get(stream) != entry_id
        }

    async def stop(self) -> None:
        """Stop refreshing; publish the marks; give the lease up (if still ours)."""
        if self._keeping is not None:
            await cancel(self._keeping)
            self._keeping = None
        if not self.leased:
            return
        self.leased = False
        try:
            marks = self._new_marks()  # what a leaving worker read, for later
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, entry_id in marks.items():
                    pipe.set(mark_key(stream, self.group), entry_id)
                pipe.get(self.key)
                *_, holder = await pipe.execute()
            self._marked.update(marks)
            if _text(holder) == self.token:
                await self.redis.delete(self.key)
        except Exception as exc:
            logger.warning(
                "taskiq_batching: cannot give up consumer_name=%r (%s): it is "
                "free again in %.1f s",
                self.consumer,
                describe(exc),
                self.ttl_ms / 1000,
            )
