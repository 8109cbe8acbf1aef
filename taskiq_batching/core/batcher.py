"""The batcher: buffers, the flush rules, the bounds, and running batches.

One ``Batcher`` per broker holds every buffer of the process. Messages
come in through ``add`` (the worker's pump, or a sender on
``InMemoryBroker``, both via the one lifecycle in ``worker/``); a buffer
is flushed (``flush.py`` says when) into the ready queue; ready batches
start while the task's ``batch_concurrency`` and the process's
``max_concurrent_batches`` allow; a finished batch goes to the
``finisher`` (the lifecycle), which stores results, runs middlewares and
acks, then ``release``s its messages.

Bounds: a process holds at most ``BatchSettings.max_held`` messages of a
task (buffered, waiting to run, running or being finished), and about
``BatchSettings.max_held_bytes`` of their wire bytes (``fits_bytes``; a
message bigger than that is taken when nothing else of its task is held).
``try_admit`` says whether one more fits; ``admit`` waits for room.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.events import Observers
from taskiq_batching.core.flush import FlushRules
from taskiq_batching.core.policies import admit
from taskiq_batching.core.run import (
    BatchSpec,
    Outcome,
    RunOptions,
    SpanMaker,
)
from taskiq_batching.core.running import Runner
from taskiq_batching.settings import FlushReason

logger = logging.getLogger("taskiq_batching")

#: ``finisher(spec, [(message, outcome)], seconds the batch ran)``
Finisher = Callable[[BatchSpec, list[tuple[Held, Outcome]], float], Awaitable[None]]


_Key = tuple[str, Hashable]

#: Batch calls that may run at once in one worker process, by default.
DEFAULT_MAX_CONCURRENT_BATCHES = 16


class Batcher:
    """Holds the buffers and batches of every batched task of one broker.

    :param broker: the broker whose batched tasks this serves.
    :param max_concurrent_batches: batch calls that may run at once.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
    ) -> None:
        self.broker = broker
        self.max_concurrent_batches = max_concurrent_batches
        self.specs: dict[str, BatchSpec] = {}
        self.options = RunOptions()
        #: Validate items against the list's element type (``--no-parse`` off).
        self.validate = True
        #: Show the values that fail in item errors (``error_values``).
        self.error_values = False
        #: Finishes the messages of a batch; set by the worker integration.
        self.finisher: Finisher | None = None
        #: Makes each batch's span, when the broker is traced.
        self.span: SpanMaker | None = None
        #: Whether the broker took a delivery back (its AMQP channel closed:
        #: it delivers the message again); set by the worker's pump.
        self.lost: Callable[[Any], bool] | None = None
        #: Told of flushes and finished batches (statistics, metrics).
        self.observers = Observers()
        self.rules = FlushRules(self)
        self.buffers: dict[_Key, Buffer] = {}
        self.held: defaultdict[str, int] = defaultdict(int)
        #: Wire bytes of messages in buffers, waiting to run or running, by task.
        self.held_bytes: defaultdict[str, int] = defaultdict(int)
        #: Messages in open buffers, by task (kept, not counted: read per add).
        self.waiting: defaultdict[str, int] = defaultdict(int)
        #: Open buffers, by task.
        self.open_keys: defaultdict[str, int] = defaultdict(int)
        #: Starts flushed batches as the concurrency limits allow.
        self.runner = Runner(self)
        self._waiters: list[asyncio.Future[None]] = []
        self._admitting = 0
        #: Messages sent (``InMemoryBroker.kick``) whose admission has not begun.
        self.incoming = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def configure(self, validate: bool, run: RunOptions | None) -> None:
        """Take the worker's settings.

        :param validate: validate items (taskiq's ``--no-parse`` turns it off).
        :param run: how batch functions run.
        """
        self.validate = validate
        if run is not None:
            self.options = run

    def register(self, spec: BatchSpec) -> None:
        """Start batching a task.

        :param spec: the task's batch spec.
        """
        self.specs[spec.task_name] = spec

    # --- admission -------------------------------------------------------

    def try_admit(self, task_name: str) -> bool:
        """Take one more message of a task if the bound allows.

        :param task_name: a batched task.
        :return: whether it was admitted (then ``release`` it when finished).
        """
        self.bind_loop()
        settings = self.specs[task_name].settings
        if self.held[task_name] >= settings.max_held:
            self.rules.relieve(task_name)
            return False
        if (
            settings.key is not None
            and self.runner.backlog[task_name] >= settings.concurrency
        ):
            # A keyed task may hold a buffer per key: what bounds it is that
            # flushed batches do not pile up (many keys, small batches).
            return False
        self.held[task_name] += 1
        return True

    def fits_bytes(self, task_name: str, size: int) -> bool:
        """Whether ``size`` more wire bytes of a task fit its byte bound.

        A message over the bound alone still fits when nothing else of the
        task is held: it is never refused for good.

        :param task_name: a batched task.
        :param size: wire bytes about to be taken (this round's, so far).
        :return: False when the worker must stop taking the task's messages.
        """
        held = self.held_bytes[task_name]
        if held + size <= self.specs[task_name].settings.max_held_bytes:
            return True
        if held == 0 and self.held[task_name] == 0:
            return True
        self.rules.relieve(task_name, full=True)
        return False

    def keyed_room(self, task_name: str) -> int | None:
        """Messages of a keyed task that may be taken before any is buffered.

        Each may open a key (and so flush the oldest buffer) or fill one:
        taking no more than the batches still allowed to wait keeps the
        task's flushed batches within ``batch_concurrency``.

        :param task_name: a batched task.
        :return: how many, or None for a task without ``batch_key``.
        """
        settings = self.specs[task_name].settings
        if settings.key is None:
            return None
        return max(settings.concurrency - self.runner.backlog[task_name], 0)

    async def admit(self, task_name: str) -> None:
        """Wait until one more message of a task fits, and take it.

        :param task_name: a batched task.
        """
        self._admitting += 1
        try:
            while not self.try_admit(task_name):
                await self._next_change()
        finally:
            self._admitting -= 1

    def arrived(self) -> None:
        """An ``incoming`` message was admitted (or gave up on it)."""
        self.incoming -= 1
        self._notify()

    def release(self, task_name: str, count: int = 1) -> None:
        """Count admitted messages of a task as finished.

        :param task_name: a batched task.
        :param count: how many.
        """
        self.held[task_name] -= count
        self._notify()

    # --- buffers -----------------------------------------------------------

    def add(self, task_name: str, message: Held) -> None:
        """Put an admitted message in its buffer; flush what the rules say.

        :param task_name: the batched task.
        :param message: the message, its ``item`` not yet set.
        :raises BatchItemError: when anything computed from the message
            fails (``policies.admit``): its arguments, key, policies, deadline.
        :raises ItemFiltered: when ``batch_where`` is false for its item.
        """
        spec = self.specs[task_name]
        loop = self.bind_loop()
        # Everything computed from the message, guarded as one: only it fails.
        admission = admit(
            spec, message, loop.time(), self.validate, values=self.error_values
        )
        args, kwargs, placement = admission.args, admission.kwargs, admission.placement
        key: _Key = (task_name, admission.key)
        buffer = self.buffers.get(key)
        size = message.size
        if buffer is not None:
            full = self.rules.full(spec, buffer, placement, size)
            if full is not None:
                self.flush(key, full)
                buffer = None
        if buffer is None:
            buffer = Buffer(task_name, key[1], args, kwargs, loop.time())
            self.buffers[key] = buffer
            self.open_keys[task_name] += 1
            self.rules.opened(spec, buffer)
        buffer.items.append(message)
        buffer.size += size
        self.held_bytes[task_name] += size
        self.waiting[task_name] += 1
        self.rules.added(spec, buffer, placement)
        if self._waiters:
            self._notify()

    def flush(self, key: _Key, reason: FlushReason) -> None:
        """Close one buffer and queue it to run.

        :param key: the buffer's key.
        :param reason: recorded as the batch's flush reason.
        """
        buffer = self.buffers.pop(key, None)
        if buffer is None:
            return
        buffer.close()
        self.waiting[key[0]] -= len(buffer.items)
        self.open_keys[key[0]] -= 1
        if self.observers:
            self.observers.flushed(key[0], reason, len(buffer.items))
        self.runner.queue(buffer, reason)

    def flush_all(self, reason: FlushReason, task_name: str | None = None) -> int:
        """Flush every buffer (of one task, or of all).

        :param reason: recorded as the batches' flush reason.
        :param task_name: only this task's buffers, when given.
        :return: the number of batches flushed.
        """
        keys = [key for key in self.buffers if task_name in (None, key[0])]
        for key in keys:
            self.flush(key, reason)
        return len(keys)

    def buffered(self, task_name: str | None = None) -> int:
        """Messages waiting in open buffers (of one task, or of all).

        :param task_name: count only this task's messages, when given.
        :return: the number of buffered messages.
        """
        if task_name is None:
            return sum(self.waiting.values())
        return self.waiting[task_name]

    async def wait_buffered(self, count: int, task_name: str | None = None) -> None:
        """Wait until at least ``count`` messages wait in buffers.

        :param count: the number of messages.
        :param task_name: count only this task's messages, when given.
        """
        while self.buffered(task_name) < count:
            await self._next_change()

    # --- running -------------------------------------------------------------

    @property
    def running(self) -> "defaultdict[str, int]":
        """Batches running now, by task."""
        return self.runner.running

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work in the background; a stop (``drain``) waits for it.

        :param work: a coroutine.
        """
        self.runner.spawn(work)

    # --- stopping ------------------------------------------------------------

    async def drain(self, deadline: float | None) -> list[Held]:
        """Flush every buffer and wait for every batch, until ``deadline``.

        From the first call on, buffers flush as soon as a message arrives.
        At the deadline, batches not finished are cut off: those running
        are cancelled, the others never start.

        :param deadline: event-loop time to give up at, or None to wait for all.
        :return: the messages of the batches cut off (neither result nor
            ack was given to them by the cut-off batch).
        """
        loop = self.bind_loop()
        self.rules.closing = True
        while self.buffers or self.runner.busy or self._admitting or self.incoming:
            self.flush_all(FlushReason.SHUTDOWN)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return self._cut()
            await asyncio.wait({self._next_change()}, timeout=remaining)
        return []

    def _cut(self) -> list[Held]:
        cut = [held for buffer in self.buffers.values() for held in buffer.items]
        for buffer in self.buffers.values():
            buffer.close()
            self.held_bytes[buffer.task_name] -= buffer.size
        self.buffers.clear()
        self.waiting.clear()
        self.open_keys.clear()
        return cut + self.runner.cut()

    def reopen(self) -> None:
        """Leave shutdown mode: a broker started again batches as before."""
        self.rules.closing = False

    # --- loop binding and change notification ------------------------------

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; state left from a closed earlier loop is dropped.

        A module-level broker may serve several event loops in turn (one per
        test, say): asyncio objects of one loop cannot be used in another.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return loop
        first, self._loop = self._loop is None, loop
        if not first:
            if self.buffers or self.runner.tasks:
                logger.warning(
                    "taskiq_batching: %d buffered message(s) of an earlier event "
                    "loop were dropped",
                    self.buffered(),
                )
            self.buffers.clear()
            self.waiting.clear()
            self.open_keys.clear()
            self.incoming = 0
            self.runner.reset()
            self.rules.reset()
            self._waiters.clear()
            self.held.clear()
            self.held_bytes.clear()
        return loop

    async def changed(self) -> None:
        """Wait for the next change (a message added or finished, a batch run)."""
        await self._next_change()

    def _next_change(self) -> "asyncio.Future[None]":
        future = self.bind_loop().create_future()
        self._waiters.append(future)
        return future

    def notify(self) -> None:
        """Wake whoever waits for a change (``changed``, ``admit``, ``drain``)."""
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
