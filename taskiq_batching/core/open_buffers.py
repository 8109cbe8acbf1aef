"""The open buffers: where admitted messages wait, by task and key, until flushed.

``add`` puts a message in its key's buffer (or in a batch of its key still
waiting to start); ``flush`` closes a buffer and queues it to run. The
flush rules (``flush.py``) say when. The ``Batcher`` (``batcher.py``) is
these buffers with the parts it owns: it makes the rules, bounds and
runner they are given.
"""

import asyncio
from collections import defaultdict

from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.changes import Changes
from taskiq_batching.core.events import Observers
from taskiq_batching.core.flush import FlushRules
from taskiq_batching.core.policies import admit
from taskiq_batching.core.ports import Key
from taskiq_batching.core.scheduling import Runner
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec


class OpenBuffers:
    """The open buffers of every batched task of one broker, and their counts.

    :param specs: the batched tasks, by name (shared, filled as they register).
    :param changes: the event loop the buffers belong to; woken on an add.
    :param rules: when a buffer flushes.
    :param bounds: what the process holds (wire bytes counted per add).
    :param runner: where a flushed buffer is queued to run.
    :param observers: told of each flush.
    :param error_values: show the values that fail in item errors.
    """

    def __init__(
        self,
        specs: dict[str, BatchSpec],
        changes: Changes,
        rules: FlushRules,
        bounds: Bounds,
        runner: Runner,
        observers: Observers,
        error_values: bool,
    ) -> None:
        self.specs = specs
        self.changes = changes
        self.rules = rules
        self.runner = runner
        self.observers = observers
        self.error_values = error_values
        #: Validate items (taskiq's ``--no-parse`` turns it off).
        self.validate = True
        self.buffers: dict[Key, Buffer] = {}
        #: Messages in open buffers, by task (kept, not counted: read per add).
        self.waiting: defaultdict[str, int] = defaultdict(int)
        #: Open buffers, by task.
        self.open_keys: defaultdict[str, int] = defaultdict(int)
        #: Messages held, by task (``Bounds.held``).
        self.held = bounds.held
        #: Wire bytes held, by task (``Bounds.held_bytes``).
        self.held_bytes = bounds.held_bytes

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

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; an earlier loop's state is dropped (``Changes``)."""
        return self.changes.bind_loop()

    def cut_buffers(self) -> list[Held]:
        """Close every buffer unflushed (a stop's cut-off): its messages."""
        cut = [held for buffer in self.buffers.values() for held in buffer.items]
        for buffer in self.buffers.values():
            buffer.close()
            self.held_bytes[buffer.task_name] -= buffer.size
        self.clear_buffers()
        return cut

    def clear_buffers(self) -> None:
        """Forget every buffer and its counts (a stop's cut-off, an earlier loop)."""
        self.buffers.clear()
        self.waiting.clear()
        self.open_keys.clear()
