"""taskiq-redis's stream brokers (standalone, sentinel, cluster), read in chunks.

The same ``XREADGROUP`` as taskiq-redis's listener (its streams,
``additional_streams``, group, consumer and ``xread_count``), its reply
as hiredis parsed it (``redis_replies``).

Before its first read, the worker takes a lease on its consumer name:
it refuses to start while another live process reads under the same
name (``redis_holding``). When the worker stops, a read in progress is
cancelled; entries it had already taken (pending for this worker, but
never seen) are found among this worker's pending entries and
processed, so none is left behind. Entries stay pending until acked;
while the worker holds them, it resets their idle time on a timer, so
that no live sibling claims them. Dead consumers' entries are claimed,
and entries read but not processed at stop released to any worker
(``redis_pending``). A lost consumer group is created again where
nothing sent since is skipped (``redis_groups``), and reading goes on.

Batched tasks' messages may wait in Redis instead (``batches``, a
``redis_batches.StreamBatches``): their entries are acked, released and
kept fresh through this transport like any other, their handles naming
the task's key stream; an acked one is deleted there too.

The producer's side is ``redis_sender.StreamSender`` (``sender_for``).
"""

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError
from taskiq import AsyncBroker, BrokerMessage
from taskiq_redis import (
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches import StreamBatches, TaskEntry
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient, cancel
from taskiq_batching.transports.redis_give_back import give_back_entries
from taskiq_batching.transports.redis_groups import (
    create_groups,
    furthest,
    mark_of,
)
from taskiq_batching.transports.redis_holding import Holding
from taskiq_batching.transports.redis_pending import Pending, warn_short_idle
from taskiq_batching.transports.redis_replies import StreamReads, by_stream, lost_group
from taskiq_batching.transports.redis_sender import StreamSender

logger = logging.getLogger("taskiq_batching")

#: Entries read at once from a stream whose broker sets no ``xread_count``.
STREAM_FETCH_COUNT = 100
#: Longest pause between two sweeps for dead consumers' entries (and
#: between two refreshes of the entries a worker holds), in seconds.
MAX_RECLAIM_INTERVAL = 10.0
#: Longest a blocking read waits on an idle stream, in milliseconds: it
#: must end before redis-py's socket timeout (5 s by default) cuts it.
MAX_BLOCK_MS = 2000

_LISTENERS = (
    RedisStreamBroker.listen,
    RedisStreamSentinelBroker.listen,
    RedisStreamClusterBroker.listen,
)

Entry = tuple[str, bytes]


def transport_for(
    broker: AsyncBroker, listen: Any = None, wait_in_broker: bool | None = None
) -> "StreamTransport | None":
    """The stream transport, for taskiq-redis stream brokers that listen as shipped.

    :param broker: any broker.
    :param listen: unused (the broker's own listener is replaced).
    :param wait_in_broker: True: batched tasks' messages wait in Redis
        (``redis_batches``); None (the default: the path is opt-in)
        or False: they are read and buffered.
    :return: the transport, or None for other brokers.
    """
    if type(broker).listen in _LISTENERS:
        return StreamTransport(broker, wait_in_broker is True)
    return None


def sender_for(
    broker: AsyncBroker, wait_in_broker: bool | None = None
) -> StreamSender | None:
    """The stream sender, for the brokers ``transport_for`` serves (else None)."""
    if type(broker).listen in _LISTENERS:
        return StreamSender(broker, wait_in_broker is True)
    return None


class StreamTransport(Consumer[Any]):
    """Reads, acks and reclaims for a taskiq-redis stream broker.

    :param broker: the stream broker (standalone, sentinel or cluster).
    :param wait_in_broker: batched tasks' messages wait in Redis, taken as
        whole batches from ``batches`` (``redis_batches``).
    """

    name = "redis-stream"

    def __init__(self, broker: Any, wait_in_broker: bool = True) -> None:
        self.broker: Any = broker
        self.client = RedisClient(broker)
        self.group: str = broker.consumer_group_name
        self.consumer: str = broker.consumer_name
        self.ids: dict[str, Any] = {broker.queue_name: ">", **broker.additional_streams}
        # Sentinel and cluster stream brokers have no xread_count.
        self.count: int = getattr(broker, "count", None) or STREAM_FETCH_COUNT
        self.block: int = min(broker.block, MAX_BLOCK_MS)
        self.idle_ms: int | None = getattr(broker, "idle_timeout", None)
        self.reclaim_interval = (
            None
            if self.idle_ms is None
            else min(self.idle_ms / 2000, MAX_RECLAIM_INTERVAL)
        )
        self.reads = StreamReads(
            self.client.redis,
            self.client.cluster,
            self.group,
            self.consumer,
            self.ids,
            self.block,
        )
        self._in_use: set[Entry] = set()
        self.pending = Pending(
            self.client.redis,
            self.group,
            self.consumer,
            self.ids,
            self.idle_ms,
            self.count,
            self._in_use,
            cluster=self.client.cluster,
        )
        #: Where batched tasks' messages wait (None: read and buffered).
        self.stream_batches: StreamBatches | None = None
        if wait_in_broker:
            self.stream_batches = StreamBatches(
                self.client,
                broker.queue_name,
                self.group,
                self.consumer,
                self._in_use,
                self.idle_ms,
                getattr(broker, "maxlen", None),
                start=lambda: self.holding.start(),
            )
        self.batches = self.stream_batches
        #: Moves a plain producer's batched messages to their key streams.
        self.forwarder = self.stream_batches
        #: Per stream, the last entry read: its id and its data.
        self._last_seen: dict[str, tuple[bytes, bytes]] = {}
        self.holding = Holding(
            self.client.redis,
            self.group,
            self.consumer,
            list(self.ids),
            self.reclaim_interval or MAX_RECLAIM_INTERVAL,
            lambda: self._in_use,
            refresh=self.idle_ms is not None,
            marks=lambda: {
                stream: mark_of(*seen) for stream, seen in self._last_seen.items()
            },
        )

    @property
    def outstanding(self) -> int:
        """Entries read and not yet acked or released."""
        return len(self._in_use)

    def check(self, specs: Sequence[BatchSpec]) -> None:
        """Warn when ``idle_timeout`` leaves a worker too little time to refresh.

        Held entries are refreshed every ``reclaim_interval`` (half of
        ``idle_timeout``, 10 s at most), however long a batch waits or runs.
        """
        warn_short_idle(self.idle_ms, self.reclaim_interval or 0.0)

    # --- reading ---------------------------------------------------------

    async def read(self, limit: int) -> list[Delivery]:
        """The next entries of the broker's streams (see ``Transport.read``)."""
        count = min(limit, self.count)
        while True:
            try:
                await self.holding.start()  # once: the consumer name's lease
                reply = await self.reads.read(count)
            except ResponseError as exc:
                if not lost_group(exc):
                    raise
                redis = self.client.redis
                await create_groups(redis, self.ids, self.group, self._last_seen, exc)
                continue
            except TRANSIENT as exc:
                await self.client.pause_after(exc, f"reading {self.broker.queue_name}")
                continue
            self.client.recovered()
            return self._deliveries(reply)

    def _deliveries(self, reply: Any) -> list[Delivery]:
        """An XREADGROUP reply, as hiredis or redis-py gave it, as deliveries."""
        chunk: list[Delivery] = []
        for stream, read in by_stream(reply):
            self._in_use.update([delivery.handle for delivery in read])
            # A stream's entries come in id order: its last one is its furthest.
            last = read[-1]
            seen = self._last_seen.get(stream)
            self._last_seen[stream] = furthest(seen, (last.handle[1], last.data))
            chunk += read
        return chunk

    async def interrupt(self, reading: Any) -> list[Delivery]:
        """Cancel the read in progress; recover what it took.

        A cancelled ``XREADGROUP`` may have been served: its entries are
        then pending for this worker though never seen. They are this
        worker's pending entries that it does not know of.
        """
        await cancel(reading)
        if not reading.cancelled() and reading.exception() is None:
            return list(reading.result())
        if not self.holding.leased:
            # Nothing was read yet; and the name may be another process's.
            return []
        # Taken before the read: an entry acked meanwhile leaves ``_in_use``
        # only once Redis has its XACK (``Pending.ack``), so whatever this
        # read returns that is not known here was never seen.
        known = set(self._in_use)
        reply = await self.reads.read_pending(len(known) + self.count)
        return [
            delivery
            for delivery in self._deliveries(reply)
            if delivery.handle not in known
        ]

    async def reclaim(self) -> list[Delivery]:
        """Dead consumers' entries idle over ``idle_timeout``: every page of them."""
        if self.idle_ms is None:
            return []
        await self.holding.start()  # fails as XAUTOCLAIM would, Redis away
        return await self.pending.sweep()

    async def ack(self, handles: Sequence[Any]) -> None:
        """One XACK per stream (``Pending.ack``)."""
        await self.pending.ack(handles)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Leave them pending, idle enough for any worker to claim them now.

        Entries taken from a task's key stream are put back undelivered
        instead, with their send time (``StreamBatches.give_back``).
        """
        taken = [d for d in deliveries if isinstance(d.handle, TaskEntry)]
        if taken and self.stream_batches is not None:
            await self.stream_batches.give_back(taken)
            deliveries = [d for d in deliveries if not isinstance(d.handle, TaskEntry)]
        await self.pending.release([d.handle for d in deliveries])

    async def requeue(
        self, given: Sequence[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        """Ack and add again at the stream's end, at once (``redis_give_back``)."""
        redis = self.client.redis
        kept = await give_back_entries(redis, self.group, self.broker, given)
        for delivery, _ in given:  # kept fresh until now: no sibling claims them
            self._in_use.discard(delivery.handle)
        return kept

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """No longer in use: once idle long enough, a sweep claims them again."""
        for delivery in deliveries:
            self._in_use.discard(delivery.handle)

    async def close(self) -> None:
        """Stop refreshing, give the consumer name up, close the client if its own."""
        await self.holding.stop()
        await self.client.close()

    async def shutdown(self) -> None:
        """Close the client if it is this transport's own (the broker shuts down)."""
        await self.client.shutdown()
