"""What a Redis broker's batch sources share: names, the take, the idle wait.

A stream broker's source (``redis_batches.StreamBatches``) and a list
broker's (``redis_list_batches.ListBatches``) keep a task's messages per
key under the same names (``redis_batches_names.TaskStreams``), take
with a script made of the same head and tail (``redis_batches_lua``)
that replies alike, and wait on the same wake streams
(``redis_batches_wake``). They differ in what a key holds (a stream, a
list), so in the script's ``visit`` and in the handles of what they take.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.core.broker_keys import deadline_ms
from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import Taken, TakenBatch, per_worker_reason
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches_names import TaskStreams, text_of
from taskiq_batching.transports.redis_batches_wake import Wakes
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient

logger = logging.getLogger("taskiq_batching")

#: Seconds a worker sleeps at most between two takes while messages wait
#: but none is due, and the slack a deadline is taken early by.
POLL_SECONDS = 0.02
#: Keys one take looks at (oldest first; a key taken goes to the back).
SCAN_KEYS = 64
#: Seconds between a process's looks for a task's dead worker's entries.
CLAIM_EVERY_SECONDS = 1.0


def marks(messages: Sequence[BrokerMessage], keys: Sequence[str]) -> dict[str, int]:
    """The earliest ``batch_deadline`` (UNIX ms) per key of messages sent.

    :param messages: the messages.
    :param keys: each one's key.
    :return: the marks (``RedisBatches.mark``).
    """
    found: dict[str, int] = {}
    for message, key in zip(messages, keys, strict=True):
        ms = deadline_ms(message.labels)
        if ms is not None and ms < found.get(key, ms + 1):
            found[key] = ms
    return found


class RedisBatches:
    """The part of a Redis ``BatchSource`` that does not depend on the key's type.

    :param client: the transport's client.
    :param queue: the broker's queue (stream or list).
    :param script: the take script (``TAKE_HEAD`` + a ``visit`` + ``TAKE_TAIL``).
    :param start: called before each take (the stream's lease and
        keep-fresh timer), if anything.
    """

    poll_seconds: float = POLL_SECONDS
    #: The script's group, consumer and claim idle ms (a stream's).
    group: str = ""
    consumer: str = ""
    idle_ms: int | None = None
    #: What becomes of a batch whose give back failed, for the log line.
    lost_text = "it is taken over after idle_timeout"

    def __init__(
        self,
        client: RedisClient,
        queue: str,
        script: str,
        start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.redis: Any = client.redis
        self.queue = queue
        self._script = script
        self._start = start
        self._take: Any = None
        self._names: dict[str, TaskStreams] = {}
        #: When each task's next take looks for a dead worker's entries.
        self._claim_at: dict[str, float] = {}
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
        """Whether a batched task waits in Redis (not when ``per_worker_reason``).

        :param spec: the task.
        :return: whether its messages wait in Redis.
        """
        return per_worker_reason(spec) is None

    async def mark(self, spec: BatchSpec, deadlines: Mapping[str, int]) -> None:
        """Mark keys whose new messages carry a ``batch_deadline`` (``ZADD LT``).

        The take script takes a marked key when its mark comes, whatever
        it holds (``redis_batches_lua``). After the messages are sent: a
        failure is logged, never raised (they were sent; only their
        promptness is lost: their batch starts by its ``batch_timeout``).

        :param spec: the batched task.
        :param deadlines: the earliest deadline (UNIX ms) per key.
        """
        if not deadlines:
            return
        names = self.names(spec.task_name)
        try:
            await self.redis.zadd(names.due, dict(deadlines), lt=True)
        except Exception as exc:
            logger.warning(
                "taskiq_batching: cannot mark the batch_deadline of messages of %s "
                "in %s; their batch starts by its batch_timeout: %s",
                spec.task_name,
                names.due,
                describe(exc),
            )

    async def take(
        self,
        spec: BatchSpec,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
    ) -> Taken:
        """Take up to ``room`` whole batches of one task (``BatchSource.take``).

        :param spec: the batched task.
        :param room: batches this worker may start now (>= 1).
        :param needs: keys whose short remainder this worker holds, and
            what each lacks (full, and taken, at that many).
        :param full_only: take full batches only (the script is told of no
            ``batch_timeout`` and claims nothing; a key a sender marked
            with a ``batch_deadline`` that came is still taken).
        :return: the batches, and the seconds to the nearest deadline.
        """
        names = self.names(spec.task_name)
        timeout = None if full_only else spec.settings.batch_timeout
        args = [
            self.group,
            self.consumer,
            spec.settings.batch_size,
            -1 if timeout is None else int(timeout * 1000),
            int(self.poll_seconds * 1000),
            names.prefix,
            SCAN_KEYS,
            max(room, 1),
            0 if full_only else self._claim_ms(spec),
        ]
        for key, need in (needs or {}).items():
            args += [key, max(int(need), 1)]
        if self._take is None:
            self._take = self.redis.register_script(self._script)
        while True:
            try:
                if self._start is not None:
                    await self._start()
                reply = await self._call(names, args)
            except TRANSIENT as exc:
                # A reply lost after the script ran: a stream's entries stay
                # pending (claimed after idle_timeout); a list's are gone
                # (the list broker's at-most-once, docs/guarantees.md).
                await self.client.pause_after(exc, f"taking from {names.keys}")
                continue
            self.client.recovered()
            return self._taken(names, reply)

    def _claim_ms(self, spec: BatchSpec) -> int:
        """The take's claim idle ms: ``idle_ms`` now and then, else 0 (none).

        Looking for a dead worker's entries (``XAUTOCLAIM``) scans the
        entries pending for the group: ~230 µs of the server's time per
        take with two batches pending, a quarter of a take. So a process
        looks at most every ``CLAIM_EVERY_SECONDS`` (or a quarter of
        ``idle_timeout``, if shorter) per task: a dead worker's batch is
        taken over that much later at most. A keyed task looks on every
        take (a take visits its oldest keys only, so a look now and then
        could miss a dead worker's key for as many rounds as it has keys).
        """
        if not self.idle_ms:
            return 0
        if spec.settings.key is not None:
            return self.idle_ms
        task_name = spec.task_name
        now = time.monotonic()
        if now < self._claim_at.get(task_name, 0.0):
            return 0
        every = min(CLAIM_EVERY_SECONDS, self.idle_ms / 4000)
        self._claim_at[task_name] = now + every
        return self.idle_ms

    async def _call(self, names: TaskStreams, args: list[Any]) -> Any:
        """The take script's reply; a take cancelled meanwhile loses nothing.

        The script is not cancelled with its caller (it may have run on
        the server already): it is waited for, and whatever it took is
        given back before the cancellation goes on.
        """
        call = asyncio.ensure_future(self._exchange(names, args))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await self._give_back_reply(names, call)
            raise

    async def _exchange(self, names: TaskStreams, args: list[Any]) -> Any:
        """The take script's reply, with the entries of each batch it took.

        :param names: the task's names.
        :param args: the script's arguments.
        :return: the reply (``TAKE_TAIL``'s layout).
        """
        return await self._take(keys=[names.keys, names.wake, names.due], args=args)

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
                "what it took (%s); %s",
                names.keys,
                describe(exc),
                self.lost_text,
            )

    def _taken(self, names: TaskStreams, reply: Any) -> Taken:
        """The take script's reply as batches (``TAKE_TAIL``'s layout)."""
        nearest_ms, wake_id, *found = reply
        self.wakes.seen[names.wake] = wake_id
        batches: list[TakenBatch] = []
        for index in range(0, len(found), 3):
            key = text_of(found[index])
            deliveries = self.deliveries(names, key, found[index + 2])
            if deliveries:
                batches.append(TakenBatch(key, deliveries, text_of(found[index + 1])))
        wait = None if int(nearest_ms) < 0 else int(nearest_ms) / 1000
        return Taken(batches, wait)

    def deliveries(self, names: TaskStreams, key: str, entries: Any) -> list[Delivery]:
        """One taken batch's entries as deliveries (the key's type's own).

        :param names: the task's names.
        :param key: the batch's key.
        :param entries: what the script took from the key.
        :return: the deliveries.
        """
        raise NotImplementedError

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Put taken deliveries back, to be taken again with their send time.

        :param deliveries: deliveries this source took.
        """
        raise NotImplementedError

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        """Block until a send wakes one of these tasks, or the timeout.

        One ``XREAD BLOCK`` on the tasks' wake streams (``redis_batches_wake``).

        :param specs: the batched tasks.
        :param timeout_seconds: the longest wait (capped at 2 s).
        """
        if specs:
            wakes = [self.names(spec.task_name).wake for spec in specs]
            await self.wakes.wait(wakes, timeout_seconds)
