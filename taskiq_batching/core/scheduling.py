"""Running flushed batches: the ready queue, the concurrency limits, the calls.

A flushed buffer waits in the ready queue until its task's
``batch_concurrency`` (and its key's ``batch_key_concurrency``) and the
process's ``max_concurrent_batches`` allow it to start, taking meanwhile
the messages of its key that come, up to its bounds (``filling``); it then runs
(``call.py``), observers are told, and the ``Finisher`` (the worker's
lifecycle) finishes its messages. The runner is given what it uses
(``ports.Serving`` at a worker's start), not the batcher.
"""

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Coroutine, Hashable, Mapping
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.call import run_batch
from taskiq_batching.core.changes import Changes
from taskiq_batching.core.events import Observers
from taskiq_batching.core.ports import Key, Serving
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")


class Runner:
    """Starts flushed batches as the concurrency limits allow, and tracks them.

    :param broker: the broker whose tasks run.
    :param specs: the batched tasks, by name.
    :param max_concurrent_batches: batch calls that may run at once.
    :param bounds: what the process holds (released as batches finish).
    :param changes: the event loop, told of every batch finished.
    :param observers: told of every batch run.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        specs: Mapping[str, BatchSpec],
        max_concurrent_batches: int,
        bounds: Bounds,
        changes: Changes,
        observers: Observers,
    ) -> None:
        self.broker = broker
        self.specs = specs
        self.max_concurrent_batches = max_concurrent_batches
        self.bounds = bounds
        self.changes = changes
        self.observers = observers
        self.serving = Serving()
        #: Flushed batches waiting to start, oldest first.
        self.ready: deque[tuple[Buffer, FlushReason]] = deque()
        #: Running batches and their buffers.
        self.tasks: dict[asyncio.Task[None], Buffer] = {}
        #: Other work a stop waits for (messages finished on their own).
        self.side: set[asyncio.Task[None]] = set()
        #: Running batches by task.
        self.running: defaultdict[str, int] = defaultdict(int)
        #: Flushed batches waiting to start, by task (counted in the bounds).
        self.backlog = bounds.backlog
        #: The newest batch of each key waiting to start: it still takes
        #: messages of its key (``join``), up to its bounds, until it starts.
        self.filling: dict[Key, Buffer] = {}
        #: Running batches by buffer key (``batch_key_concurrency``).
        self.running_keys: defaultdict[tuple[str, Hashable], int] = defaultdict(int)

    def serve(self, serving: Serving) -> None:
        """Run and finish batches as a worker says from now on.

        :param serving: what the worker gives.
        """
        self.serving = serving

    @property
    def busy(self) -> bool:
        """Whether a batch waits, runs, or other work of a stop is not done."""
        return bool(self.ready or self.tasks or self.side)

    def queue(self, buffer: Buffer, reason: FlushReason) -> None:
        """Queue a flushed buffer to run, and start what may start.

        :param buffer: the flushed buffer.
        :param reason: why it was flushed.
        """
        self.ready.append((buffer, reason))
        self.backlog[buffer.task_name] += 1
        self.filling[(buffer.task_name, buffer.key)] = buffer
        self.dispatch()

    def join(self, buffer: Buffer, held: Held, size: int, cost: float) -> None:
        """Add a message (``size`` bytes, ``cost``) to a batch of ``filling``.

        The batch starts no later for it: when a slot frees, as it would have.
        """
        buffer.items.append(held)
        buffer.size += size
        buffer.cost += cost
        self.bounds.held_bytes[buffer.task_name] += size

    def dispatch(self) -> None:
        """Start ready batches while the concurrency limits allow, oldest first."""
        skipped: deque[tuple[Buffer, FlushReason]] = deque()
        while self.ready and len(self.tasks) < self.max_concurrent_batches:
            buffer, reason = self.ready.popleft()
            name = buffer.task_name
            settings = self.specs[name].settings
            per_key = settings.key_concurrency
            if self.running[name] >= settings.concurrency or (
                per_key is not None and self.running_keys[(name, buffer.key)] >= per_key
            ):
                skipped.append((buffer, reason))
                continue
            self.running[name] += 1
            self.backlog[name] -= 1
            if self.filling.get((name, buffer.key)) is buffer:
                del self.filling[(name, buffer.key)]
            if per_key is not None:
                self.running_keys[(name, buffer.key)] += 1
            spec = self.specs[name]
            task = self.changes.bind_loop().create_task(self._run(spec, buffer, reason))
            self.tasks[task] = buffer
            task.add_done_callback(self._ran)
        skipped.extend(self.ready)
        self.ready = skipped

    def _ran(self, task: "asyncio.Task[None]") -> None:
        buffer = self.tasks.pop(task, None)
        if buffer is not None:
            name = buffer.task_name
            self.running[name] -= 1
            self.bounds.held_bytes[name] -= buffer.size
            if self.specs[name].settings.key_concurrency is not None:
                key = (name, buffer.key)
                self.running_keys[key] -= 1
                if not self.running_keys[key]:
                    del self.running_keys[key]
        self.dispatch()
        self.changes.notify()

    async def _run(self, spec: BatchSpec, buffer: Buffer, reason: FlushReason) -> None:
        loop = asyncio.get_running_loop()
        dropped = self.drop_lost(buffer)
        if dropped:
            logger.warning(
                "taskiq_batching: %d message(s) of a batch of %s not run: their "
                "connection to the broker was lost, which delivers them again",
                dropped,
                spec.task_name,
            )
            if not buffer.items:
                return
        logger.info(
            "Executing batch of %d of %s (%s)",
            len(buffer.items),
            spec.task_name,
            reason.value,
        )
        started = loop.time()
        waited = started - buffer.opened_at
        serving = self.serving
        try:
            if serving.span is None:
                outcomes = await run_batch(
                    self.broker, spec, buffer, reason, serving.options
                )
            else:
                with serving.span(spec.task_name, buffer, reason, waited) as span:
                    outcomes = await run_batch(
                        self.broker, spec, buffer, reason, serving.options
                    )
                    span.outcomes(outcomes)
        except asyncio.CancelledError:
            if self.observers:
                self.observers.ran(buffer, spec, reason, waited, loop.time() - started)
            raise
        ran = loop.time() - started
        if self.observers:
            failed = sum(1 for outcome in outcomes if outcome.error is not None)
            self.observers.ran(buffer, spec, reason, waited, ran, failed)
        if serving.finisher is not None:
            # The messages and their outcomes side by side: no pair per message.
            await serving.finisher.finish(spec, buffer.items, outcomes, ran)

    def drop_lost(self, buffer: Buffer) -> int:
        """Take out of a batch about to start the messages the broker took back.

        Running them would run them twice: the broker delivers them again
        (a lost AMQP channel's unacked deliveries are requeued). Messages
        already acked (``when_received``) stay.

        :param buffer: the batch.
        :return: how many were taken out (and released).
        """
        lost = self.serving.lost
        if lost is None:
            return 0
        kept = [
            held
            for held in buffer.items
            if held.delivery is None
            or (held.ack is not None and held.ack.is_acked)
            or not lost(held.delivery)
        ]
        dropped = len(buffer.items) - len(kept)
        if dropped:
            buffer.items[:] = kept
            self.bounds.release(buffer.task_name, dropped)
        return dropped

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work in the background; a stop (``drain``) waits for it.

        :param work: a coroutine.
        """
        task = self.changes.bind_loop().create_task(work)
        self.side.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: "asyncio.Task[None]") -> None:
        self.side.discard(task)
        self.changes.notify()

    def cut(self) -> list[Held]:
        """Cancel running batches, drop waiting ones (a stop's deadline passed).

        :return: the messages of those batches.
        """
        cut = [held for buffer, _ in self.ready for held in buffer.items]
        cut += [held for buffer in self.tasks.values() for held in buffer.items]
        for buffer, _ in self.ready:
            self.bounds.held_bytes[buffer.task_name] -= buffer.size
        self.ready.clear()
        self.backlog.clear()
        self.filling.clear()
        for task in self.tasks:
            task.cancel()
        return cut

    def reset(self) -> None:
        """Forget batches of an earlier event loop."""
        self.ready.clear()
        self.backlog.clear()
        self.filling.clear()
        self.tasks.clear()
        self.running.clear()
        self.running_keys.clear()
