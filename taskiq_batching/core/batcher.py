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

It is the open buffers (``open_buffers.py``: ``add``, ``flush``...) with
the parts it owns, and their one link (the rules see it as
``ports.Buffers``); the worker calls its methods (``serve``,
``begin_shutdown``...).
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.core import room as task_room
from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Held
from taskiq_batching.core.changes import Changes
from taskiq_batching.core.events import Observers
from taskiq_batching.core.flush import FlushRules
from taskiq_batching.core.open_buffers import OpenBuffers
from taskiq_batching.core.ports import Key, Serving
from taskiq_batching.core.scheduling import Runner
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")

#: Batch calls that may run at once in one worker process, by default.
DEFAULT_MAX_CONCURRENT_BATCHES = 16


class Batcher(OpenBuffers):
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
        specs: dict[str, BatchSpec] = {}
        observers = Observers() if observers is None else observers
        changes = Changes(self._drop_earlier_loop)
        # The rules see these buffers (``ports.Buffers``), set up just below.
        rules = FlushRules(self)
        self.bounds = Bounds(specs, rules.relieve, changes)
        runner = Runner(
            broker, specs, max_concurrent_batches, self.bounds, changes, observers
        )
        super().__init__(
            specs, changes, rules, self.bounds, runner, observers, error_values
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

    def relieve(self, task_name: str) -> None:
        """Nothing more of a task comes: flush its buffers once they hold all of it.

        ``FlushRules.relieve`` without its message bound (no batch of the
        task running is enough).

        :param task_name: a batched task.
        """
        self.rules.relieve(task_name, full=True)

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
                return self.cut_buffers() + self.runner.cut()
            await asyncio.wait({self.changes.next()}, timeout=remaining)
        return []

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

    # --- the event loop and change notification -----------------------------

    def _drop_earlier_loop(self) -> None:
        if self.buffers or self.runner.tasks:
            logger.warning(
                "taskiq_batching: %d buffered message(s) of an earlier event "
                "loop were dropped",
                self.buffered(),
            )
        self.clear_buffers()
        self.runner.reset()
        self.rules.reset()
        self.bounds.clear()

    def changed(self) -> "asyncio.Future[None]":
        """A future resolved at the next change (a message added or finished...)."""
        return self.changes.next()

    def notify(self) -> None:
        """Wake whoever waits for a change (``changed``, ``drain``, admissions)."""
        self.changes.notify()
