"""Running flushed batches: the ready queue, the concurrency limits, the calls.

A flushed buffer waits in the ready queue until its task's
``batch_concurrency`` (and its key's ``batch_key_concurrency``) and the
process's ``max_concurrent_batches`` allow it to start; it then runs
(``call.py``), observers are told, and the batcher's ``finisher`` (the
worker's lifecycle) finishes its messages.
"""

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any

from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.call import run_batch
from taskiq_batching.core.events import BatchReport
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

if TYPE_CHECKING:
    from taskiq_batching.core.batcher import Batcher

logger = logging.getLogger("taskiq_batching")


class Runner:
    """Starts a batcher's flushed batches as its limits allow, and tracks them.

    :param batcher: the batcher whose batches these are.
    """

    def __init__(self, batcher: "Batcher") -> None:
        self.batcher = batcher
        #: Flushed batches waiting to start, oldest first.
        self.ready: deque[tuple[Buffer, FlushReason]] = deque()
        #: Running batches and their buffers.
        self.tasks: dict[asyncio.Task[None], Buffer] = {}
        #: Other work a stop waits for (messages finished on their own).
        self.side: set[asyncio.Task[None]] = set()
        #: Running batches by task.
        self.running: defaultdict[str, int] = defaultdict(int)
        #: Flushed batches waiting to start, by task.
        self.backlog: defaultdict[str, int] = defaultdict(int)
        #: Running batches by buffer key (``batch_key_concurrency``).
        self.running_keys: defaultdict[tuple[str, Hashable], int] = defaultdict(int)

    @property
    def busy(self) -> bool:
        """Whether a batch waits, runs, or other work of a stop is not done."""
        return bool(self.ready or self.tasks or self.side)

    def room(self, task_name: str) -> int:
        """Whole batches of a task that may start now (taken from the broker).

        What ``batch_concurrency``, ``max_concurrent_batches`` and, for a
        keyed task, ``batch_max_keys`` (distinct keys running or waiting
        to run) leave, counting the batches already queued, and no more
        full batches than the task's held bound (``max_held``) has room for
        besides what waits in its open buffers.

        :param task_name: a batched task.
        :return: how many (0: wait for a change).
        """
        settings = self.batcher.specs[task_name].settings
        room = min(
            settings.concurrency - self.running[task_name] - self.backlog[task_name],
            self.batcher.max_concurrent_batches - len(self.tasks) - len(self.ready),
        )
        if settings.key is not None and settings.max_keys is not None:
            busy = {b.key for b in self.tasks.values() if b.task_name == task_name}
            busy.update(b.key for b, _ in self.ready if b.task_name == task_name)
            room = min(room, settings.max_keys - len(busy))
        # Messages in open buffers (a taken batch's short remainder) are
        # not held against the room: the take that tops them up flushes them.
        batcher = self.batcher
        held = settings.max_held - batcher.held[task_name] + batcher.buffered(task_name)
        return max(min(room, held // settings.batch_size), 0)

    def queue(self, buffer: Buffer, reason: FlushReason) -> None:
        """Queue a flushed buffer to run, and start what may start.

        :param buffer: the flushed buffer.
        :param reason: why it was flushed.
        """
        self.ready.append((buffer, reason))
        self.backlog[buffer.task_name] += 1
        self.dispatch()

    def dispatch(self) -> None:
        """Start ready batches while the concurrency limits allow, oldest first."""
        skipped: deque[tuple[Buffer, FlushReason]] = deque()
        while self.ready and len(self.tasks) < self.batcher.max_concurrent_batches:
            buffer, reason = self.ready.popleft()
            name = buffer.task_name
            settings = self.batcher.specs[name].settings
            per_key = settings.key_concurrency
            if self.running[name] >= settings.concurrency or (
                per_key is not None and self.running_keys[(name, buffer.key)] >= per_key
            ):
                skipped.append((buffer, reason))
                continue
            self.running[name] += 1
            self.backlog[name] -= 1
            if per_key is not None:
                self.running_keys[(name, buffer.key)] += 1
            spec = self.batcher.specs[name]
            task = self.batcher.bind_loop().create_task(self._run(spec, buffer, reason))
            self.tasks[task] = buffer
            task.add_done_callback(self._ran)
        skipped.extend(self.ready)
        self.ready = skipped

    def _ran(self, task: "asyncio.Task[None]") -> None:
        buffer = self.tasks.pop(task, None)
        if buffer is not None:
            name = buffer.task_name
            self.running[name] -= 1
            self.batcher.held_bytes[name] -= buffer.size
            if self.batcher.specs[name].settings.key_concurrency is not None:
                key = (name, buffer.key)
                self.running_keys[key] -= 1
                if not self.running_keys[key]:
                    del self.running_keys[key]
        self.dispatch()
        self.batcher.notify()

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
        try:
            if self.batcher.span is None:
                outcomes = await run_batch(
                    self.batcher.broker, spec, buffer, reason, self.batcher.options
                )
            else:
                with self.batcher.span(spec.task_name, buffer, reason, waited) as span:
                    outcomes = await run_batch(
                        self.batcher.broker, spec, buffer, reason, self.batcher.options
                    )
                    span.outcomes(outcomes)
        except asyncio.CancelledError:
            if self.batcher.observers:
                self._report(spec, buffer, reason, waited, loop.time() - started)
            raise
        ran = loop.time() - started
        if self.batcher.observers:
            failed = sum(1 for outcome in outcomes if outcome.error is not None)
            self._report(spec, buffer, reason, waited, ran, failed)
        if self.batcher.finisher is not None:
            batch = list(zip(buffer.items, outcomes, strict=True))
            await self.batcher.finisher(spec, batch, ran)

    def drop_lost(self, buffer: Buffer) -> int:
        """Take out of a batch about to start the messages the broker took back.

        Running them would run them twice: the broker delivers them again
        (a lost AMQP channel's unacked deliveries are requeued). Messages
        already acked (``when_received``) stay.

        :param buffer: the batch.
        :return: how many were taken out (and released).
        """
        lost = self.batcher.lost
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
            self.batcher.bounds.release(buffer.task_name, dropped)
        return dropped

    def _report(
        self,
        spec: BatchSpec,
        buffer: Buffer,
        reason: FlushReason,
        waited: float,
        ran: float,
        failed: int | None = None,
    ) -> None:
        """Tell observers a batch ran (``failed`` None: it was cut off)."""
        self.batcher.observers.finished(
            BatchReport(
                task_name=spec.task_name,
                size=len(buffer.items),
                batch_size=spec.settings.batch_size,
                reason=reason,
                waited=waited,
                seconds=ran,
                failed=0 if failed is None else failed,
                calls=buffer.calls,
                cut=failed is None,
            ),
        )

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work in the background; a stop (``drain``) waits for it.

        :param work: a coroutine.
        """
        task = self.batcher.bind_loop().create_task(work)
        self.side.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: "asyncio.Task[None]") -> None:
        self.side.discard(task)
        self.batcher.notify()

    def cut(self) -> list[Held]:
        """Cancel running batches, drop waiting ones (a stop's deadline passed).

        :return: the messages of those batches.
        """
        cut = [held for buffer, _ in self.ready for held in buffer.items]
        cut += [held for buffer in self.tasks.values() for held in buffer.items]
        for buffer, _ in self.ready:
            self.batcher.held_bytes[buffer.task_name] -= buffer.size
        self.ready.clear()
        self.backlog.clear()
        for task in self.tasks:
            task.cancel()
        return cut

    def reset(self) -> None:
        """Forget batches of an earlier event loop."""
        self.ready.clear()
        self.backlog.clear()
        self.tasks.clear()
        self.running.clear()
        self.running_keys.clear()
