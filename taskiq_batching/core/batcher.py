"""The batcher: buffers, the flush rules, the bounds, and running batches.

One ``Batcher`` per broker holds every buffer of the process. Messages
come in through ``add`` (the worker's pump, or a sender on
``InMemoryBroker``, both via the one lifecycle in ``worker/``); a buffer
is flushed (``flush.py`` says when) into the ready queue; ready batches
start while the task's ``batch_concurrency`` and the process's
``max_concurrent_batches`` allow (``scheduling.py``); a finished batch
goes to the ``Finisher`` (the lifecycle), which stores results, runs
middlewares and acks, then releases its messages. What a process may hold
of a task is counted in ``bounds.py``; ``admit`` waits for room there.

It owns its parts, their one link (the rules see it as ``ports.Buffers``);
the worker calls its methods (``serve``, ``begin_shutdown``...).
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.core import room as task_room
from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.changes import Changes
from taskiq_batching.core.events import Observers
from taskiq_batching.core.flush import FlushRules
from taskiq_batching.core.policies import admit
from taskiq_batching.core.ports import Key, Serving
from taskiq_batching.core.scheduling import Runner
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")

#: Batch calls that may run at once in one worker process, by default.
DEFAULT_MAX_CONCURRENT_BATCHES = 16


class Batcher:
    """Holds the buffers and batches of every batched task of one broker.

    :param broker: the broker whose batched tasks this serves.
    :param max_concurrent_batches: batch calls that may run at once.
    :param observers: told of flushes and finished batches (statistics,
        metrics); the caller may add more later.
    :param serving: how batches run and are finished, until a worker
        starts serving (``serve``).
    :param error_values: show the values that fail in item errors.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
        observers: Observers | None = None,
        serving: Serving | None = None,
        error_values: bool = False,
    ) -> None:
        self.specs: dict[str, BatchSpec] = {}
        self.error_values = error_values
        self.observers = Observers() if observers is None else observers
        self.changes = Changes(self._drop_earlier_loop)
        self.rules = FlushRules(self)
        self.buffers: dict[Key, Buffer] = {}
        #: Messages in open buffers, by task (kept, not counted: read per add).
        self.waiting: defaultdict[str, int] = defaultdict(int)
        #: Open buffers, by task.
        self.open_keys: defaultdict[str, int] = defaultdict(int)
        self.bounds = Bounds(self.specs, self.rules.relieve, self.changes)
        #: Messages held, by task (``Bounds.held``).
        self.held = self.bounds.held
        #: Wire bytes held, by task (``Bounds.held_bytes``).
        self.held_bytes = self.bounds.held_bytes
        #: Starts flushed batches as the concurrency limits allow.
        self.runner = Runner(
            broker,
            self.specs,
            max_concurrent_batches,
            self.bounds,
            self.changes,
            self.observers,
        )
        self.serve(Serving() if serving is None else serving)

    def serve(self, serving: Serving) -> None:
        """Run and finish batches as a worker says, from now on.

        :param serving: its run options, finisher, span maker...
        """
        self.validate = serving.validate
        self.runner.serve(serving)

    def register(self, spec: BatchSpec) -> None:
        """Start batching a task.

        :param spec: the task's batch spec.
        """
        self.specs[spec.task_name] = spec

    # --- buffers -----------------------------------------------------------

    def add(self, task_name: str, message: Held, now: float | None = None) -> None:
        """Put an admitted message in its buffer; flush what the rules say.

        :param task_name: the batched task.
        :param message: the message, its ``item`` not yet set.
        :param now: the running loop's time now, read by a caller that
            called ``bind_loop`` with no await since (once for a chunk of
            messages); None: bound and read here.
        :raises BatchItemError: when anything computed from the message
            fails (``policies.admit``): its arguments, key, policies, deadline.
        :raises ItemFiltered: when ``batch_where`` is false for its item.
        """
        spec = self.specs[task_name]
        # One reading of the clock for the whole addition (admission, the
        # buffer's opening, its timer): nothing in between awaits.
        if now is None:
            now = self.bind_loop().time()
        # Everything computed from the message, guarded as one: only it fails.
        args, kwargs, within, placement = admit(
            spec, message, now, self.validate, values=self.error_values
        )
        key: Key = (task_name, within)
        buffer = self.buffers.get(key)
        # ``Held.size`` without its call per message: the bytes as read.
        data = getattr(message.delivery, "data", None)
        size = len(data) if type(data) is bytes else message.size
        # Only a cost or byte bound fills a buffer before its size: no call else.
        if buffer is not None and (
            placement is not None or spec.settings.max_bytes is not None
        ):
            full = self.rules.full(spec, buffer, placement, size)
            if full is not None:
                self.flush(key, full)
                buffer = None
        if buffer is None:
            # A batch of its key waiting to start takes it, if in its bounds.
            waiting = self.runner.filling.get(key)
            if (
                waiting is not None
                and len(waiting.items) < spec.settings.batch_size
                and self.rules.full(spec, waiting, placement, size) is None
            ):
                cost = 0.0 if placement is None else placement.cost
                self.runner.join(waiting, message, size, cost)
                return
            # Copies: an admission's may be shared (``policies._NO_ARGS``).
            buffer = Buffer(task_name, key[1], list(args), dict(kwargs), now)
            self.buffers[key] = buffer
            self.open_keys[task_name] += 1
            self.rules.opened(spec, buffer)
        buffer.items.append(message)
        buffer.size += size
        self.held_bytes[task_name] += size
        self.waiting[task_name] += 1
        self.rules.added(spec, buffer, placement, now)
        if self.changes.waiters:  # not ``bool(changes)``: a call per message
            self.changes.notify()

    def flush(self, key: Key, reason: FlushReason) -> None:
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

    def room(self, task_name: str) -> int:
        """Whole batches of a task that may start now (``core/room.py``)."""
        topping = task_room.topping(self.buffers, self.waiting, task_name)
        return task_room.room(self.runner, task_name, topping)

    def ahead(self, task_name: str) -> bool:
        """Whether a full batch may be taken to wait for a slot (``core/room.py``)."""
        topping = task_room.topping(self.buffers, self.waiting, task_name)
        return task_room.ahead(self.runner, task_name, topping)

    def flush_taken(
        self, taken: Sequence[tuple[Held, FlushReason]]
    ) -> list[tuple[Key, Held]]:
        """Flush the buffers of batches taken whole (``FlushRules.flush_taken``).

        :param taken: each message held and its batch's reason.
        :return: the buffers left open, each with one of its taken messages.
        """
        return self.rules.flush_taken(taken)

    def relieve_all(self) -> None:
        """The broker delivers nothing more until something is acked: flush all."""
        self.rules.relieve_all()

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
        self.begin_shutdown()
        while self.buffers or self.runner.busy or self.bounds.pending:
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

    def begin_shutdown(self) -> None:
        """From now on, buffers flush as soon as a message arrives (a stop)."""
        self.rules.closing = True

    def senders_wait(self, waiting: bool) -> None:
        """Whether senders wait for each result: buffers flush on the next turn.

        :param waiting: ``InMemoryBroker(await_inplace=True)``.
        """
        self.rules.eager = waiting

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
        self.runner.reset()
        self.rules.reset()
        self.bounds.clear()

    def changed(self) -> "asyncio.Future[None]":
        """A future resolved at the next change (a message added or finished...)."""
        return self.changes.next()

    def notify(self) -> None:
        """Wake whoever waits for a change (``changed``, ``drain``, admissions)."""
        self.changes.notify()
