"""A stream consumer's pending entries: acked, claimed from the dead, released.

Entries stay pending in the consumer group until acked (one ``XACK`` per
stream for a batch; an entry of a task's key stream, where batched
tasks' messages wait, is deleted too). Those idle
longer than the broker's ``idle_timeout`` (their worker died, or
stalled) are claimed on a timer, every page of them (``XAUTOCLAIM``),
never this worker's own entries still in use. Entries read but not
processed at stop are left pending, made claimable at once (``XCLAIM``
with their idle time set to ``idle_timeout``). The worker keeps its own
entries fresh meanwhile (``redis_holding``); ``warn_short_idle`` says
when ``idle_timeout`` leaves it too little time to.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

from redis.exceptions import ResponseError

from taskiq_batching._compat.redis_py import string_encoding
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches import TaskEntry
from taskiq_batching.transports.redis_batches_lua import ACK_DELETE
from taskiq_batching.transports.redis_wire import round_trip
from taskiq_batching.transports.redis_xack import xack_command

logger = logging.getLogger("taskiq_batching")

#: Below this ``idle_timeout`` (ms), a short stall of a worker's event
#: loop lets a sibling claim the entries it holds: the worker warns.
MIN_IDLE_MS = 5000

Entry = tuple[str, bytes]

_first = itemgetter(0)
_second = itemgetter(1)


def warn_short_idle(idle_ms: int | None, interval: float) -> None:
    """Warn when ``idle_timeout`` leaves a worker too little time to refresh.

    Held entries are refreshed every ``interval`` however long a batch
    waits or runs: only a stall of the worker's event loop longer than
    the rest of ``idle_timeout`` lets another worker claim them.

    :param idle_ms: the broker's ``idle_timeout`` (None: nothing is claimed).
    :param interval: seconds between two refreshes.
    """
    if idle_ms is None or idle_ms >= MIN_IDLE_MS:
        return
    logger.warning(
        "taskiq_batching: the broker's idle_timeout=%d ms: entries this "
        "worker holds are refreshed every %g s, so a stall of its event loop "
        "(blocking code in an async task, Redis unreachable) of %g s lets "
        "another worker claim and run them again (a duplicate). Keep "
        "idle_timeout at %d ms or more.",
        idle_ms,
        interval,
        idle_ms / 1000 - interval,
        MIN_IDLE_MS,
    )


class Pending:
    """Acks, claims and releases the pending entries of one consumer's streams.

    :param redis: the client.
    :param group: the consumer group.
    :param consumer: this consumer.
    :param streams: the streams it reads.
    :param idle_ms: the broker's ``idle_timeout`` (None: nothing is claimed).
    :param count: entries claimed per page.
    :param in_use: the entries this consumer holds: claimed ones are added,
        acked and released ones removed.
    :param cluster: whether ``redis`` is a cluster client (no hand-packed XACK).
    """

    def __init__(
        self,
        redis: Any,
        group: str,
        consumer: str,
        streams: Iterable[str],
        idle_ms: int | None,
        count: int,
        in_use: set[Entry],
        cluster: bool = False,
    ) -> None:
        self.redis = redis
        self.cluster = cluster
        self.group = group
        self.consumer = consumer
        self.streams = list(streams)
        self.idle_ms = idle_ms
        self.count = count
        self.in_use = in_use

    async def ack(self, handles: Sequence[Any]) -> None:
        """One XACK per stream; an entry of a task's key stream is deleted too.

        Deleted, so that a key stream holds only what waits or runs: a
        group created there again at ``0`` runs nothing that had finished.

        :param handles: the entries, ``(stream, id)`` each.
        """
        try:
            await self._ack(handles)
        finally:
            # Only now: until Redis has the XACK, the entries are still
            # pending, and a read of this consumer's pending entries
            # (``interrupt``) or a sweep must not take them for unseen ones.
            self.in_use.difference_update(handles)

    async def _ack(self, handles: Sequence[Any]) -> None:
        if not handles:
            return
        # The usual ack, a batch of one stream's plain entries, without a
        # step per entry in Python: ids, streams and kinds by ``map``.
        ids = list(map(_second, handles))
        streams = set(map(_first, handles))
        kinds = set(map(type, handles))
        if len(streams) == 1 and len(kinds) == 1:
            # One stream's entries: a batch read (XACK) or taken (its key
            # stream's entries acked and deleted), in one packed command.
            (stream,) = streams
            if TaskEntry in kinds:
                await self.ack_delete(stream, ids)
            else:
                await self.xack(stream, ids)
            return
        by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
        deleted: set[str] = set()
        for handle in handles:
            stream, entry_id = handle
            by_stream[stream].append(entry_id)
            if isinstance(handle, TaskEntry):
                deleted.add(stream)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                if stream in deleted:
                    pipe.eval(ACK_DELETE, 1, stream, self.group, *ids)
                else:
                    pipe.xack(stream, self.group, *ids)
            await pipe.execute()

    async def xack(self, stream: str, ids: list[bytes]) -> None:
        """One XACK; packed by hand (``redis_wire``) off a cluster.

        It is sent once per batch with an id per message: redis-py would
        encode each id on its own. XACK is idempotent: a round trip
        retried after a lost connection acks the same entries again.

        :param stream: the stream.
        :param ids: its entries' ids (bytes, as read).
        :raises redis.exceptions.ResponseError: what the server answered.
        """
        if not await self._packed(stream, ids, delete=False):
            await self.redis.xack(stream, self.group, *ids)

    async def ack_delete(self, stream: str, ids: list[bytes]) -> None:
        """``MULTI``, ``XACK``, ``XDEL``, ``EXEC`` of a task's key stream's entries.

        A taken batch's ack, packed as ``xack``: as idempotent as XACK
        (acking and deleting the same entries again changes nothing).
        Where it cannot be packed (a cluster, str ids), the ``ACK_DELETE``
        script; packed, a transaction, as the script costs the server
        ~60 µs more per 100 ids (converting them into Lua), a fifth of
        the ack.

        :param stream: the key stream.
        :param ids: its entries' ids (bytes, as read).
        :raises redis.exceptions.ResponseError: what the server answered.
        """
        if not await self._packed(stream, ids, delete=True):
            await self.redis.eval(ACK_DELETE, 1, stream, self.group, *ids)

    async def _packed(self, stream: str, ids: list[bytes], delete: bool) -> bool:
        """Send the ack packed by hand; False if it cannot be (cluster, str ids)."""
        if self.cluster:
            return False
        charset, errors = string_encoding(self.redis)  # as redis-py's
        names = (stream.encode(charset, errors), self.group.encode(charset, errors))
        packed = xack_command(*names, ids, delete=delete)
        if packed is None:
            return False
        replies = await round_trip(self.redis, [packed], 4 if delete else 1)
        for reply in replies[-1] if delete and isinstance(replies[-1], list) else []:
            if isinstance(reply, ResponseError):  # XACK or XDEL failed in EXEC
                raise reply
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return True

    async def sweep(self) -> list[Delivery]:
        """Dead consumers' entries idle over ``idle_timeout``: every page of them.

        :return: the entries claimed, now this consumer's.
        """
        if self.idle_ms is None:
            return []
        claimed: list[Delivery] = []
        for stream in self.streams:
            cursor: Any = "0-0"
            while True:
                cursor, page = await self._page(stream, cursor)
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

    async def _page(self, stream: str, cursor: Any) -> tuple[Any, list[Delivery]]:
        # Taken before the claim: an entry this worker acks meanwhile stays
        # in ``in_use`` until Redis has the XACK, so one missing here was
        # not this worker's to run.
        held = set(self.in_use)
        reply = await self.redis.xautoclaim(
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
            if entry in held:
                continue  # still ours, held in a batch or by the Receiver
            data = fields.get(b"data") if fields else None
            if data is None:  # deleted from the stream meanwhile
                await self.redis.xack(stream, self.group, entry_id)
                continue
            self.in_use.add(entry)
            page.append(Delivery(data, entry))
        return reply[0], page

    async def release(self, handles: Sequence[Entry]) -> None:
        """Leave entries pending, idle enough for any worker to claim them now.

        :param handles: the entries, ``(stream, id)`` each.
        """
        by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
        for stream, entry_id in handles:
            self.in_use.discard((stream, entry_id))
            by_stream[stream].append(entry_id)
        if self.idle_ms is None:
            return
        for stream, ids in by_stream.items():
            await self.redis.xclaim(
                stream,
                self.group,
                self.consumer,
                min_idle_time=0,
                message_ids=ids,
                idle=self.idle_ms,
                justid=True,
            )
