"""The batcher: buffers, the flush rules, the bounds, and running batches.

One ``Batcher`` per broker holds every buffer of the process. Messages
come in through ``add`` (the worker's pump, or a sender on
``InMemoryBroker``, both via the one lifecycle in ``worker/``); a buffer
is flushed (``flush.py`` says when) into the ready queue; ready batches
start while the task's ``batch_concurrency`` and the process's
``max_concurrent_batches`` allow; a finished batch goes to the
``finisher`` (the lifecycle), which stores results, runs middlewares and
acks, then releases its messages. What a process may hold of a task is
counted in ``bounds.py``; ``admit`` waits for room there.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.call import Outcome, RunOptions, SpanMaker
from taskiq_batching.core.changes import Changes
from taskiq_batching.core.events import Observers
from taskiq_batching.core.flush import FlushRules
from taskiq_batching.core.policies import admit
from taskiq_batching.core.scheduling import Runner
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

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
        self.changes = Changes(self._drop_earlier_loop)
        self.rules = FlushRules(self)
        self.buffers: dict[_Key, Buffer] = {}
        #: Messages in open buffers, by task (kept, not counted: read per add).
        self.waiting: defaultdict[str, int] = defaultdict(int)
        #: Open buffers, by task.
        self.open_keys: defaultdict[str, int] = defaultdict(int)
        #: Starts flushed batches as the concurrency limits allow.
        self.runner = Runner(self)
        self.bounds = Bounds(
            self.specs, self.runner.backlog, self.rules.relieve, self.changes
        )
        #: Messages held, by task (``Bounds.held``).
        self.held = self.bounds.held
        #: Wire bytes held, by task (``Bounds.held_bytes``).
        self.held_bytes = self.bounds.held_bytes
        self._admitting = 0
        #: Messages sent (``InMemoryBroker.kick``) whose admission has not begun.
        self.incoming = 0

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

    def fits_bytes(self, task_name: str, size: int) -> bool:
        """Whether ``size`` more wire bytes of a task fit (``Bounds.fits_bytes``).

        :param task_name: a batched task.
        :param size: wire bytes about to be taken.
        :return: False when the worker must stop taking the task's messages.
        """
        return self.bounds.fits_bytes(task_name, size)

    async def admit(self, task_name: str) -> None:
        """Wait until one more message of a task fits, and take it.

        :param task_name: a batched task.
        """
        self._admitting += 1
        try:
            while not self.bounds.try_admit(task_name):
                await self.changes.next()
        finally:
            self._admitting -= 1

    def arrived(self) -> None:
        """An ``incoming`` message was admitted (or gave up on it)."""
        self.incoming -= 1
        self.changes.notify()

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
        if self.changes:
            self.changes.notify()

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
            await self.changes.next()

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
            await asyncio.wait({self.changes.next()}, timeout=remaining)
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
        """The running loop; an earlier loop's state is dropped (``Changes``)."""
        return self.changes.bind_loop()

    def _drop_earlier_loop(self) -> None:
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
        self.bounds.clear()

    async def changed(self) -> None:
        """Wait for the next change (a message added or finished, a batch run)."""
        await self.changes.next()

    def notify(self) -> None:
        """Wake whoever waits for a change (``changed``, ``admit``, ``drain``)."""
        self.changes.notify()
