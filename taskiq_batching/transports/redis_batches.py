"""Batched tasks' messages wait in Redis until a batch is worth taking.

A fleet of workers batches as one (issue 18, ``docs/fleet.md``): each
batched task has, per key (``core/broker_keys.py``), a stream
``{<queue>:<task>}:q:<key>``; the sorted set ``{<queue>:<task>}:keys``
lists the keys that may hold messages, and idle workers block on the
stream ``{<queue>:<task>}:wake``. The hash tag keeps a task's keys in one
cluster slot, so that one script reaches them all.

Producers with the plugin send there (``redis_batches_send``); a worker
forwards what a plain producer put on the main stream (``forward``,
keeping the original send time). A worker takes a whole batch only when
the broker holds one, or its oldest message is due (``TAKE``, atomic:
two workers never split a batch); the script reserves the key and this
worker reads the batch with a plain ``XREADGROUP`` (``_exchange``: the
entries are never converted into Lua and back). Taken entries are pending for the
worker under the broker's consumer group and consumer name, and are kept
fresh like the main stream's (``redis_holding``); a dead worker's are
taken over by the next take after ``idle_timeout``. An entry acked is
deleted from its key's stream, so that a group created again at ``0``
(a lost group) runs nothing twice that had finished.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.core.broker_keys import NO_KEY
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches_base import RedisBatches, marks
from taskiq_batching.transports.redis_batches_lua import HOLD_MS, TAKE
from taskiq_batching.transports.redis_batches_names import (
    TaskEntry,
    TaskStreams,
    entry_ms,
    text_of,
)
from taskiq_batching.transports.redis_batches_send import Move, move, send
from taskiq_batching.transports.redis_common import RedisClient
from taskiq_batching.transports.redis_replies import streams

logger = logging.getLogger("taskiq_batching")

__all__ = [
    "NO_KEY",
    "StreamBatches",
    "TaskEntry",
    "TaskStreams",
    "entry_ms",
]


_new_tuple = tuple.__new__


def _entries_of(read: Any) -> Any:
    """The entries of one stream's ``XREADGROUP`` reply (none: an error)."""
    if isinstance(read, Exception):
        return []
    for _, found in streams(read):
        return found
    return []


def _fields(flat: Any) -> dict[bytes, bytes]:
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=False))


class StreamBatches(RedisBatches):
    """A stream broker's ``BatchSource``: takes whole batches, forwards, sends.

    :param client: the transport's client.
    :param queue: the broker's stream.
    :param group: the broker's consumer group.
    :param consumer: this worker's consumer name.
    :param in_use: the transport's entries in use (taken ones join them, so
        that they are refreshed and never claimed back by this worker).
    :param idle_ms: the broker's ``idle_timeout`` (None: never claim).
    :param maxlen: the broker's ``maxlen`` for its streams.
    :param start: called before each take: the transport's lease on its
        consumer name and its keep-fresh timer (``Holding.start``).
    """

    def __init__(
        self,
        client: RedisClient,
        queue: str,
        group: str,
        consumer: str,
        in_use: set[Any],
        idle_ms: int | None,
        maxlen: int | None = None,
        start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(client, queue, TAKE, start)
        self.group = group
        self.consumer = consumer
        self.in_use = in_use
        self.idle_ms = idle_ms
        self.maxlen = maxlen
        #: The start of this consumer's fields in a task's reservations
        #: (``redis_batches_lua``: its length in bytes, ``:``, the name).
        self._held = f"{len(consumer.encode())}:{consumer}"

    def deliveries(self, names: TaskStreams, key: str, entries: Any) -> list[Delivery]:
        """A taken batch's entries as deliveries; each joins the entries in use.

        :param names: the task's names.
        :param key: the batch's key.
        :param entries: ``(id, fields)`` read from the key's stream.
        :return: the deliveries (without ours still in use).
        """
        stream = names.stream(key)
        place = (names, key)
        in_use = self.in_use
        found: list[Delivery] = []
        for entry_id, flat in entries:
            if type(flat) is list and len(flat) == 2 and type(entry_id) is bytes:
                # A producer's: data alone. ``TaskEntry(stream, entry_id,
                # place)`` and ``handle.sent_ms`` without their frames: this
                # runs per message taken.
                handle = _new_tuple(TaskEntry, (stream, entry_id))
                handle.place = place
                data = flat[1]
                sent_ms = int(entry_id.partition(b"-")[0])
            else:  # a forwarded entry: data and t
                fields = _fields(flat)
                sent = fields.get(b"t")
                handle = TaskEntry(
                    stream, entry_id, place, None if sent is None else int(sent)
                )
                data = fields.get(b"data", b"")
                sent_ms = handle.sent_ms
            if handle in in_use:
                continue  # ours, still in use (claimed back after a stall)
            in_use.add(handle)
            # A remainder left open here times out from the send (flush.py).
            found.append(Delivery(data, handle, None, sent_ms / 1000))  # sent_at
        return found

    async def _exchange(self, names: TaskStreams, args: list[Any]) -> Any:
        """The take script's reply, each batch it reserved read, then released.

        One round trip after the script: an ``XREADGROUP COUNT <n>`` per
        batch reserved, then an ``HDEL`` of this consumer's reservations.
        A reply that came later than half the reservation's ``HOLD_MS``
        (a stalled event loop) is not acted on: the reservation may have
        run out and the entries be another worker's by then, so they are
        only released, and the take is made again.

        :param names: the task's names.
        :param args: the script's arguments.
        :return: the reply, the entries read in place of each count.
        """
        began = time.monotonic()
        keys = [names.keys, names.wake, names.due, names.taking]
        reply = list(await self._take(keys=keys, args=args))
        places = [at for at in range(4, len(reply), 3) if isinstance(reply[at], int)]
        if not places:
            return reply
        fresh = time.monotonic() - began < HOLD_MS / 2000
        reserved = [text_of(reply[at - 2]) for at in places]
        async with self.redis.pipeline(transaction=False) as pipe:
            if fresh:
                for at, key in zip(places, reserved, strict=True):
                    streams_ = {names.stream(key): ">"}
                    pipe.xreadgroup(self.group, self.consumer, streams_, reply[at])
            pipe.hdel(names.taking, *[self._held + key for key in reserved])
            reads = await pipe.execute(raise_on_error=False)
        if not fresh:
            logger.debug("taskiq_batching: a take came back late; taken again")
        for index, at in enumerate(places):
            reply[at] = _entries_of(reads[index]) if fresh else []
            if not reply[at]:
                reply[0] = 0  # nothing read: look again at once
        return reply

    # --- moving messages in: sending, forwarding, giving back -----------

    async def send(
        self,
        spec: BatchSpec,
        messages: Sequence[BrokerMessage],
        keys: Sequence[str],
        once: bool,
    ) -> None:
        """Send a task's messages to where they wait (``redis_batches_send``).

        :param spec: the batched task.
        :param messages: its messages, in order.
        :param keys: each message's ``broker_key``.
        :param once: each at most once (``kiq_many``), else one ``MULTI``.
        :raises SendManyError: (``once``) some messages were not sent.
        """
        names = self.names(spec.task_name)
        await send(self.redis, names, messages, keys, self.maxlen, once)
        await self.mark(spec, marks(messages, keys))

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        """Move batched messages read on the main stream to their task's streams.

        One ``MULTI`` (per task on a cluster, whose main stream lives in
        another slot: there the originals are acked right after it):
        ``XADD`` to the key's stream (the message unchanged, field ``t`` =
        the original entry id's time, so that the deadline counts from
        the original send), ``ZADD NX`` of the key, the wake, and the
        ``XACK`` of the original. A failure raises and leaves the
        originals pending and in use (release or forget them); a worker
        killed before ``EXEC`` leaves them pending, for another to claim
        and forward once.

        :param deliveries: ``(delivery, its task's spec, its broker_key)``
            for deliveries read from the main stream (or taken from a key
            stream: moved back, undelivered, with their send time).
        :raises Exception: what Redis answered.
        """
        by_task: defaultdict[str, list[Move]] = defaultdict(list)
        for delivery, spec, key in deliveries:
            names = self.names(spec.task_name)
            by_task[names.keys].append((delivery, names, key))
        await self._move(list(by_task.values()), acks_too=not self.client.cluster)

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Put taken entries back, undelivered, keeping their send time.

        Each task's in one ``MULTI`` (a task's keys share a slot): added
        again with their ``t``, the originals acked and deleted.

        :param deliveries: deliveries taken from a task's key stream.
        :raises Exception: what Redis answered.
        """
        by_task: defaultdict[str, list[Move]] = defaultdict(list)
        for delivery in deliveries:
            handle: TaskEntry = delivery.handle
            by_task[handle.names.keys].append((delivery, handle.names, handle.key))
        await self._move(list(by_task.values()), acks_too=True)

    async def _move(self, by_task: list[list[Move]], acks_too: bool) -> None:
        everything = [one for part in by_task for one in part]
        rounds = by_task if self.client.cluster else [everything]
        for part in rounds:
            if part:
                await move(self.redis, self.group, self.maxlen, part, acks_too)
        for delivery, _, _ in everything:
            self.in_use.discard(delivery.handle)
