"""Bounds: how much of each batched task a worker process holds, and whether more fits.

A process holds at most ``BatchSettings.max_held`` messages of a task
(buffered, waiting to run, running or being finished), and about
``BatchSettings.max_held_bytes`` of their wire bytes; a keyed task also
takes no more than the flushed batches still allowed to wait. A message
is counted from its admission (``try_admit``) until its batch is finished
(``release``). ``admit`` waits for room; a stop waits for the messages
on their way in (``pending``).
"""

from collections import defaultdict
from collections.abc import Callable, Mapping

from taskiq_batching.core.changes import Changes
from taskiq_batching.spec import BatchSpec

#: ``relieve(task_name, full)``: the task is at a bound; flush its buffers
#: if they hold all it may hold (``full``: at its byte bound).
Relieve = Callable[[str, bool], None]


class Bounds:
    """Counts what a process holds of each task, against the task's bounds.

    :param specs: the batched tasks, by name.
    :param relieve: called when a task is refused at a bound.
    :param changes: the event loop (counts of an earlier one are dropped
        first), told when messages are released.
    """

    def __init__(
        self,
        specs: Mapping[str, BatchSpec],
        relieve: Relieve,
        changes: Changes,
    ) -> None:
        self.specs = specs
        self.relieve = relieve
        self.changes = changes
        #: Messages admitted and not yet finished, by task.
        self.held: defaultdict[str, int] = defaultdict(int)
        #: Wire bytes of messages in buffers, waiting to run or running, by task.
        self.held_bytes: defaultdict[str, int] = defaultdict(int)
        #: Flushed batches waiting to run, by task (kept by ``Runner``).
        self.backlog: defaultdict[str, int] = defaultdict(int)
        #: Messages waiting in ``admit``.
        self.admitting = 0
        #: Messages sent (``InMemoryBroker.kick``) whose admission has not begun.
        self.incoming = 0

    @property
    def pending(self) -> bool:
        """Whether messages are on their way in (a stop waits for them)."""
        return bool(self.admitting or self.incoming)

    async def admit(self, task_name: str) -> None:
        """Wait until one more message of a task fits, and take it.

        :param task_name: a batched task.
        """
        self.admitting += 1
        try:
            while not self.try_admit(task_name):
                await self.changes.next()
        finally:
            self.admitting -= 1

    def expect(self) -> None:
        """A message was sent (``InMemoryBroker.kick``); its admission is to come.

        A stop waits for it until ``arrived``.
        """
        self.changes.bind_loop()  # state of an earlier loop is dropped first
        self.incoming += 1

    def arrived(self) -> None:
        """An expected message was admitted (or gave up on it)."""
        self.incoming -= 1
        self.changes.notify()

    def try_admit(self, task_name: str) -> bool:
        """Take one more message of a task if the bound allows.

        :param task_name: a batched task.
        :return: whether it was admitted (then ``release`` it when finished).
        """
        self.changes.bind_loop()
        settings = self.specs[task_name].settings
        if self.held[task_name] >= settings.max_held:
            self.relieve(task_name, False)
            return False
        if settings.key is not None and self.backlog.get(task_name, 0) >= (
            settings.concurrency
        ):
            # A keyed task may hold a buffer per key: what bounds it is that
            # flushed batches do not pile up (many keys, small batches).
            return False
        self.held[task_name] += 1
        return True

    def take(self, task_name: str, count: int) -> None:
        """Count messages taken whole from the broker (a batch that waited there).

        They are not refused: the worker asked for them only while its
        limits left room for their batch (``core/room.py``).

        :param task_name: a batched task.
        :param count: how many (``release`` them when finished).
        """
        self.changes.bind_loop()
        self.held[task_name] += count

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
        self.relieve(task_name, True)
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
        return max(settings.concurrency - self.backlog.get(task_name, 0), 0)

    def release(self, task_name: str, count: int = 1) -> None:
        """Count admitted messages of a task as finished.

        :param task_name: a batched task.
        :param count: how many.
        """
        self.held[task_name] -= count
        self.changes.notify()

    def clear(self) -> None:
        """Forget every count (the state of an earlier event loop)."""
        self.held.clear()
        self.held_bytes.clear()
        self.incoming = 0
