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
two workers never split a batch). Taken entries are pending for the
worker under the broker's consumer group and consumer name, and are kept
fresh like the main stream's (``redis_holding``); a dead worker's are
taken over by the next take after ``idle_timeout``. An entry acked is
deleted from its key's stream, so that a group created again at ``0``
(a lost group) runs nothing twice that had finished.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.core.broker_keys import NO_KEY
from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import Delivery, Taken, TakenBatch
from taskiq_batching.transports.redis_batches_lua import TAKE
from taskiq_batching.transports.redis_batches_names import (
    TaskEntry,
    TaskStreams,
    entry_ms,
    text_of,
)
from taskiq_batching.transports.redis_batches_send import Move, move, send
from taskiq_batching.transports.redis_batches_wake import Wakes
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient

logger = logging.getLogger("taskiq_batching")

#: Seconds a worker sleeps at most between two takes while messages wait
#: but none is due, and the slack a deadline is taken early by.
POLL_SECONDS = 0.02
#: Keys one take looks at (oldest first; a key taken goes to the back).
SCAN_KEYS = 64

__all__ = [
    "NO_KEY",
    "StreamBatches",
    "TaskEntry",
    "TaskStreams",
    "entry_ms",
]


def _fields(flat: Any) -> dict[bytes, bytes]:
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=False))


class StreamBatches:
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

    poll_seconds: float = POLL_SECONDS

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
        self.client = client
        self.redis: Any = client.redis
        self.queue = queue
        self.group = group
        self.consumer = consumer
        self.in_use = in_use
        self.idle_ms = idle_ms
        self.maxlen = maxlen
        self._start = start
        self._take: Any = None
        self._names: dict[str, TaskStreams] = {}
        self.wakes = Wakes(client)

    def names(self, task_name: str) -> TaskStreams:
        """The names of a task's keys (made once).

        :param task_name: the task.
        :return: its names.
        """
        found = self._names.get(task_name)
        if found is None:
            found = self._names[task_name] = TaskStreams(self.queue, task_name)
        return found

    def serves(self, spec: BatchSpec) -> bool:
        """Every batched task of the broker waits in Redis.

        :param spec: the task.
        :return: True.
        """
        return True

    async def take(self, spec: BatchSpec, room: int) -> Taken:
        """Take up to ``room`` whole batches of one task (``BatchSource.take``).

        :param spec: the batched task.
        :param room: batches this worker may start now (>= 1).
        :return: the batches, and the seconds to the nearest deadline.
        """
        names = self.names(spec.task_name)
        settings = spec.settings
        timeout_ms = (
            -1 if settings.batch_timeout is None else int(settings.batch_timeout * 1000)
        )
        args = [
            self.group,
            self.consumer,
            settings.batch_size,
            timeout_ms,
            int(self.poll_seconds * 1000),
            names.prefix,
            SCAN_KEYS,
            max(room, 1),
            self.idle_ms or 0,
        ]
        if self._take is None:
            self._take = self.redis.register_script(TAKE)
        while True:
            try:
                if self._start is not None:  # once: lease, keep-fresh timer
                    await self._start()
                reply = await self._call(names, args)
            except TRANSIENT as exc:
                # A reply lost after the script ran leaves its entries
                # pending and unknown here: the next take claims them
                # after idle_timeout (never lost).
                await self.client.pause_after(exc, f"taking from {names.keys}")
                continue
            self.client.recovered()
            return self._taken(names, reply)

    async def _call(self, names: TaskStreams, args: list[Any]) -> Any:
        """The take script's reply; a take cancelled meanwhile loses nothing.

        The script is not cancelled with its caller (it may have run on
        the server already): it is waited for, and whatever it took is
        given back, undelivered, before the cancellation goes on.
        """
        call = asyncio.ensure_future(
            self._take(keys=[names.keys, names.wake], args=args)
        )
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await self._give_back_reply(names, call)
            raise

    async def _give_back_reply(self, names: TaskStreams, call: Any) -> None:
        try:
            reply = await call
            taken = self._taken(names, reply)
            await self.give_back(
                [d for batch in taken.batches for d in batch.deliveries]
            )
        except Exception as exc:
            logger.warning(
                "taskiq_batching: a cancelled take from %s could not give back "
                "what it took (%s); it is taken over after idle_timeout",
                names.keys,
                describe(exc),
            )

    def _taken(self, names: TaskStreams, reply: Any) -> Taken:
        nearest_ms, wake_id, *found = reply
        self.wakes.seen[names.wake] = wake_id
        batches: list[TakenBatch] = []
        for index in range(0, len(found), 3):
            key, reason, entries = (
                text_of(found[index]),
                found[index + 1],
                found[index + 2],
            )
            stream = names.stream(key)
            place = (names, key)
            in_use = self.in_use
            deliveries: list[Delivery] = []
            for entry_id, flat in entries:
                if len(flat) == 2:  # what a producer writes: data alone
                    handle = TaskEntry(stream, entry_id, place)
                    data = flat[1]
                else:  # a forwarded entry: data and t
                    fields = _fields(flat)
                    sent = fields.get(b"t")
                    handle = TaskEntry(
                        stream, entry_id, place, None if sent is None else int(sent)
                    )
                    data = fields.get(b"data", b"")
                if handle in in_use:
                    continue  # ours, still in use (claimed back after a stall)
                in_use.add(handle)
                deliveries.append(Delivery(data, handle))
            if deliveries:
                batches.append(TakenBatch(key, deliveries, text_of(reason)))
        wait = None if int(nearest_ms) < 0 else int(nearest_ms) / 1000
        return Taken(batches, wait)

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        """Block until a send wakes one of these tasks, or the timeout.

        One ``XREAD BLOCK`` on the tasks' wake streams (``redis_batches_wake``).

        :param specs: the batched tasks.
        :param timeout_seconds: the longest wait (capped at 2 s).
        """
        if specs:
            wakes = [self.names(spec.task_name).wake for spec in specs]
            await self.wakes.wait(wakes, timeout_seconds)

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
