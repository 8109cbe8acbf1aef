"""Batched messages wait in Redis lists until a batch is worth taking.

The list brokers' side of issue 18 (``docs/fleet.md``), the stream's
design (``redis_batches``) with lists: per batched task and key
(``core/broker_keys.py``) a list ``{<queue>:<task>}:q:<key>`` of
``"<ms>|<message>"`` elements, the same sorted set of keys and the same
wake stream. ``LIST_TAKE`` (``redis_list_batches_lua``) pops a whole
batch, atomically, when the list holds one or its oldest element is due.

A list forgets what it pops, as the list broker does: a worker killed
between a take and its batch's end loses that batch (the list broker's
documented at-most-once, ``docs/guarantees.md``). Nothing is pending,
nothing is kept fresh, nothing is claimed; ``release`` pushes taken
messages back at the head end with their time (``give_back``).
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from taskiq import BrokerMessage

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches_base import RedisBatches, marks
from taskiq_batching.transports.redis_batches_names import TaskStreams
from taskiq_batching.transports.redis_batches_send import (
    chunk_call,
    send_by_key,
    task_chunks,
)
from taskiq_batching.transports.redis_common import RedisClient
from taskiq_batching.transports.redis_list_batches_lua import LIST_PUT, LIST_TAKE


@dataclass(frozen=True, slots=True, eq=False)
class ListEntry:
    """The handle of a message taken from a task's key list.

    :param names: its task's names.
    :param key: its key.
    :param sent_ms: when it was put on the key's list (its deadline
        counts from it), by Redis's clock, in ms.
    """

    names: TaskStreams
    key: str
    sent_ms: int
    #: A list forgets what it pops: nothing to ack (``Delivery.handle``).
    needs_ack: ClassVar[bool] = False


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def element_of(value: Any) -> tuple[int | None, bytes]:
    """An element of a key list as its time and its message.

    :param value: ``"<ms>|<message>"`` as read.
    :return: the ms (None when it has none) and the message's bytes.
    """
    element = _as_bytes(value)
    stamp, bar, data = element.partition(b"|")
    if not bar or not stamp.isdigit():
        return None, element  # not ours: the message whole
    return int(stamp), data


class ListBatches(RedisBatches):
    """A list broker's ``BatchSource``: takes whole batches, forwards, sends.

    :param client: the transport's client.
    :param queue: the broker's list.
    """

    lost_text = "it is lost (a list forgets what it pops)"

    def __init__(self, client: RedisClient, queue: str) -> None:
        super().__init__(client, queue, LIST_TAKE)

    def deliveries(self, names: TaskStreams, key: str, entries: Any) -> list[Delivery]:
        """A taken batch's elements as deliveries, oldest first.

        :param names: the task's names.
        :param key: the batch's key.
        :param entries: the elements popped.
        :return: the deliveries.
        """
        found: list[Delivery] = []
        for value in entries:
            sent_ms, data = element_of(value)
            sent_at = None if sent_ms is None else sent_ms / 1000
            found.append(
                Delivery(data, ListEntry(names, key, sent_ms or 0), sent_at=sent_at)
            )
        return found

    async def send(
        self,
        spec: BatchSpec,
        messages: Sequence[BrokerMessage],
        keys: Sequence[str],
        once: bool,
    ) -> None:
        """Send a task's messages to their keys' lists, stamped with Redis's time.

        :param spec: the batched task.
        :param messages: its messages, in order.
        :param keys: each message's ``broker_key``.
        :param once: each at most once (``kiq_many``: a marked script per
            chunk), else a script per chunk without a mark (``kiq``).
        :raises SendManyError: (``once``) some messages were not sent.
        """
        names = self.names(spec.task_name)
        if once:
            await send_by_key(self.redis, names, messages, keys, LIST_PUT, "")
        else:
            await self._put(names, [m.message for m in messages], keys)
        await self.mark(spec, marks(messages, keys))

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        """Move batched messages popped from the main list to their task's lists.

        The main list keeps no send time: each is stamped with the time it
        is forwarded (Redis's). A failure raises; what was popped is then
        the caller's (``release`` pushes it back on the main list).

        :param deliveries: ``(delivery, its task's spec, its broker_key)``
            for deliveries read from the main list.
        :raises Exception: what Redis answered.
        """
        by_task: defaultdict[str, list[tuple[Delivery, str]]] = defaultdict(list)
        for delivery, spec, key in deliveries:
            by_task[spec.task_name].append((delivery, key))
        for task_name, moves in by_task.items():
            names = self.names(task_name)
            await self._put(names, [d.data for d, _ in moves], [k for _, k in moves])

    async def _put(
        self, names: TaskStreams, payloads: Sequence[bytes], keys: Sequence[str]
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in task_chunks(names, len(payloads)):
                pipe.eval(LIST_PUT, *chunk_call(names, part, payloads, keys, "", 0))
            await pipe.execute()

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Push taken messages back at their list's head end, with their time.

        Each task's in one ``MULTI`` (a task's keys share a slot): the
        elements as they were, the key named in the set, the wake.

        :param deliveries: deliveries taken from a task's key lists.
        :raises Exception: what Redis answered.
        """
        by_task: defaultdict[int, list[ListEntry]] = defaultdict(list)
        data: dict[int, bytes] = {}
        for delivery in deliveries:
            handle: ListEntry = delivery.handle
            by_task[id(handle.names)].append(handle)
            data[id(handle)] = delivery.data
        for handles in by_task.values():
            names = handles[0].names
            async with self.redis.pipeline(transaction=True) as pipe:
                # The right end is popped first: push the newest first.
                for handle in reversed(handles):
                    element = b"%d|" % handle.sent_ms + data[id(handle)]
                    pipe.rpush(names.stream(handle.key), element)
                oldest = {h.key: h.sent_ms for h in reversed(handles)}
                pipe.zadd(names.keys, oldest, nx=True)
                pipe.xadd(names.wake, {b"w": b"1"}, maxlen=1, approximate=False)
                await pipe.execute()
