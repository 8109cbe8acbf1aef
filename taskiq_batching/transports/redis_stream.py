"""taskiq-redis's stream brokers (standalone, sentinel, cluster), read in chunks.

The same ``XREADGROUP`` as taskiq-redis's listener (its streams,
``additional_streams``, group, consumer and ``xread_count``), sent the
way the client reads cheapest (``redis_replies``): a plain ``XREADGROUP``
with hiredis, a packing script without it.

Before its first read, the worker takes a lease on its consumer name:
it refuses to start while another live process reads under the same
name (``redis_holding``). When the worker stops, a read in progress is
cancelled; entries it had already taken (pending for this worker, but
never seen) are found among this worker's pending entries and
processed, so none is left behind. Entries stay pending until acked
(one ``XACK`` per stream for a batch); while the worker holds them, it
resets their idle time on a timer, so that no live sibling claims them.
Entries idle longer than the broker's ``idle_timeout`` (their worker
died, or stalled) are claimed on a timer, every page of them
(``XAUTOCLAIM``), never this worker's own entries still in use. Entries
read but not processed at stop are left pending, made claimable at once.
A lost consumer group (a restarted Redis without persistence, a deleted
stream or group) is created again and reading goes on: after the last
entry read by this worker or, further, by the fleet (the mark its
workers publish on their timer, ``redis_holding``), when the stream still
holds that entry; otherwise (the stream was made again, or nobody read
anything) at its start. Nothing sent after the loss is skipped.

Batched tasks' messages may wait in Redis instead (``batches``, a
``redis_batches.StreamBatches``): their entries are acked, released and
kept fresh through this transport like any other, their handles naming
the task's key stream; an acked one is deleted there too.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

from redis.exceptions import ResponseError
from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_redis import (
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import BatchSource, Delivery, Forwarder
from taskiq_batching.transports.generic import kick_each
from taskiq_batching.transports.redis_batches import StreamBatches, TaskEntry
from taskiq_batching.transports.redis_batches_lua import ACK_DELETE
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient, cancel
from taskiq_batching.transports.redis_give_back import give_back_entries
from taskiq_batching.transports.redis_groups import (
    Seen,
    create_group,
    describe_id,
    furthest,
    mark_of,
)
from taskiq_batching.transports.redis_holding import Holding
from taskiq_batching.transports.redis_replies import StreamReads, entries, lost_group
from taskiq_batching.transports.redis_send import STREAM_ONCE, chunks, send_once

logger = logging.getLogger("taskiq_batching")

#: Entries read at once from a stream whose broker sets no ``xread_count``.
STREAM_FETCH_COUNT = 100
#: Longest pause between two sweeps for dead consumers' entries (and
#: between two refreshes of the entries a worker holds), in seconds.
MAX_RECLAIM_INTERVAL = 10.0
#: Below this ``idle_timeout`` (ms), a short stall of a worker's event
#: loop lets a sibling claim the entries it holds: the worker warns.
MIN_IDLE_MS = 5000
#: Longest a blocking read waits on an idle stream, in milliseconds: it
#: must end before redis-py's socket timeout (5 s by default) cuts it.
MAX_BLOCK_MS = 2000

_LISTENERS = (
    RedisStreamBroker.listen,
    RedisStreamSentinelBroker.listen,
    RedisStreamClusterBroker.listen,
)
_KICKS = (
    RedisStreamBroker.kick,
    RedisStreamSentinelBroker.kick,
    RedisStreamClusterBroker.kick,
)

Entry = tuple[str, bytes]


def transport_for(
    broker: AsyncBroker, listen: Any = None, wait_in_broker: bool | None = None
) -> "StreamTransport | None":
    """The stream transport, for taskiq-redis stream brokers that listen as shipped.

    :param broker: any broker.
    :param listen: unused (the broker's own listener is replaced).
    :param wait_in_broker: True: batched tasks' messages wait in Redis
        (``redis_batches``); None (the default, while this path is a
        preview) or False: they are read and buffered.
    :return: the transport, or None for other brokers.
    """
    if type(broker).listen in _LISTENERS:
        return StreamTransport(broker, wait_in_broker is True)
    return None


class StreamTransport:
    """Reads, acks, reclaims and sends for a taskiq-redis stream broker.

    :param broker: the stream broker (standalone, sentinel or cluster).
    :param wait_in_broker: batched tasks' messages wait in Redis, taken as
        whole batches from ``batches`` (``redis_batches``).
    """

    name = "redis-stream"
    acknowledges = True
    prefetch: int | None = None

    def __init__(self, broker: Any, wait_in_broker: bool = True) -> None:
        self.broker = broker
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
        self.batches: BatchSource | None = self.stream_batches
        #: Moves a plain producer's batched messages to their key streams.
        self.forwarder: Forwarder | None = self.stream_batches
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
        ``idle_timeout``, 10 s at most), however long a batch waits or runs:
        only a stall of the worker's event loop longer than the rest of
        ``idle_timeout`` lets another worker claim them.
        """
        if self.idle_ms is None or self.idle_ms >= MIN_IDLE_MS:
            return
        interval = self.reclaim_interval or 0.0
        logger.warning(
            "taskiq_batching: the broker's idle_timeout=%d ms: entries this "
            "worker holds are refreshed every %g s, so a stall of its event loop "
            "(blocking code in an async task, Redis unreachable) of %g s lets "
            "another worker claim and run them again (a duplicate). Keep "
            "idle_timeout at %d ms or more.",
            self.idle_ms,
            interval,
            self.idle_ms / 1000 - interval,
            MIN_IDLE_MS,
        )

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
                await self._create_groups(exc)
                continue
            except TRANSIENT as exc:
                await self.client.pause_after(exc, f"reading {self.broker.queue_name}")
                continue
            self.client.recovered()
            return self._deliveries(reply)

    async def _create_groups(self, error: ResponseError) -> None:
        """Create the consumer group again, where nothing sent since is skipped.

        Never at ``$`` (``redis_groups``): a worker that had read nothing
        yet would skip every entry sent while the group was missing.
        """
        starts: list[str] = []
        for stream in self.ids:
            seen = self._last_seen.get(stream)
            start = await create_group(self.client.redis, stream, self.group, seen)
            starts.append(f"{stream} after {describe_id(start)}")
        logger.warning(
            "taskiq_batching: consumer group %s was missing (%s); created again "
            "after the last entry known read, or at the start of a stream made "
            "again: %s",
            self.group,
            error,
            ", ".join(starts),
        )

    def _deliveries(self, reply: Any) -> list[Delivery]:
        """An XREADGROUP reply, packed or parsed by redis-py, as deliveries."""
        chunk: list[Delivery] = []
        # A stream's entries come in id order: its last one is its furthest.
        last: dict[str, Seen] = {}
        for stream, entry_id, data in entries(reply):
            entry = (stream, entry_id)
            self._in_use.add(entry)
            last[stream] = (entry_id, data)
            chunk.append(Delivery(data, entry))
        for stream, read in last.items():
            self._last_seen[stream] = furthest(self._last_seen.get(stream), read)
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
        redis = self.client.redis
        reply = await redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.ids, "0"),
            count=len(self._in_use) + self.count,
        )
        known = set(self._in_use)
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
        claimed: list[Delivery] = []
        for stream in self.ids:
            cursor: Any = "0-0"
            while True:
                cursor, page = await self._claim_page(stream, cursor)
                claimed.extend(page)
                if cursor in (b"0-0", "0-0"):
                    break
        if claimed:
            logger.warning(
                "taskiq_batching: claimed %d message(s) idle for over %d ms "
                "(idle_timeout): the worker that read them stopped refreshing "
                "them (it stopped and left them, died, or its event loop stalled)",
                len(claimed),
                self.idle_ms,
            )
        return claimed

    async def _claim_page(self, stream: str, cursor: Any) -> tuple[Any, list[Delivery]]:
        redis = self.client.redis
        reply = await redis.xautoclaim(
            stream,
            self.group,
            self.consumer,
            min_idle_time=self.idle_ms,
            start_id=cursor,
            count=self.count,
        )
        page: list[Delivery] = []
        for entry_id, fields in reply[1]:
            entry = (stream, entry_id)
            if entry in self._in_use:
                continue  # still ours, held in a batch or by the Receiver
            data = fields.get(b"data") if fields else None
            if data is None:  # deleted from the stream meanwhile
                await redis.xack(stream, self.group, entry_id)
                continue
            self._in_use.add(entry)
            page.append(Delivery(data, entry))
        return reply[0], page

    # --- acks --------------------------------------------------------------

    async def ack(self, handles: Sequence[Any]) -> None:
        """One XACK per stream; an entry of a task's key stream is deleted too.

        Deleted, so that a key stream holds only what waits or runs: a
        group created there again at ``0`` runs nothing that had finished.
        """
        by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
        deleted: set[str] = set()
        for handle in handles:
            stream, entry_id = handle
            by_stream[stream].append(entry_id)
            self._in_use.discard(handle)
            if isinstance(handle, TaskEntry):
                deleted.add(stream)
        redis = self.client.redis
        if len(by_stream) == 1 and not deleted:
            ((stream, ids),) = by_stream.items()
            await redis.xack(stream, self.group, *ids)
            return
        async with redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                if stream in deleted:
                    pipe.eval(ACK_DELETE, 1, stream, self.group, *ids)
                else:
                    pipe.xack(stream, self.group, *ids)
            await pipe.execute()

    async def _ack_one(self, entry: Entry) -> None:
        await self.ack([entry])

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Leave them pending, idle enough for any worker to claim them now.

        Entries taken from a task's key stream are put back undelivered
        instead, with their send time (``StreamBatches.give_back``).
        """
        taken = [d for d in deliveries if isinstance(d.handle, TaskEntry)]
        if taken and self.stream_batches is not None:
            await self.stream_batches.give_back(taken)
            deliveries = [d for d in deliveries if not isinstance(d.handle, TaskEntry)]
        by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
        for delivery in deliveries:
            stream, entry_id = delivery.handle
            self._in_use.discard((stream, entry_id))
            by_stream[stream].append(entry_id)
        if self.idle_ms is None or not by_stream:
            return
        for stream, ids in by_stream.items():
            await self.client.redis.xclaim(
                stream,
                self.group,
                self.consumer,
                min_idle_time=0,
                message_ids=ids,
                idle=self.idle_ms,
                justid=True,
            )

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

    def for_receiver(self, delivery: Delivery) -> AckableMessage:
        """As taskiq-redis's listener yields it: data and an XACK."""
        return AckableMessage(
            data=delivery.data, ack=partial(self._ack_one, delivery.handle)
        )

    # --- sending -------------------------------------------------------------

    async def send(self, messages: Sequence[BrokerMessage]) -> None:
        """XADD every message, as ``kick`` would, each once (``redis_send``)."""
        broker = self.broker
        if type(broker).kick not in _KICKS:  # a subclass sends its own way
            await kick_each(broker, messages)
            return
        trim = "" if broker.maxlen is None else str(broker.maxlen)
        options = ["stream", "~" if broker.approximate else "=", trim]
        parts = chunks(messages, broker.queue_name)
        await send_once(self.client, messages, parts, STREAM_ONCE, options)
