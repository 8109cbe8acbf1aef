"""The taker: whole batches taken from where they wait in the broker.

With ``BatchingMiddleware(wait_in_broker=True)`` and a transport whose
``batches`` (a ``BatchSource``) serves a batched task, that task's
messages do not wait in this process: they wait in the broker until a
batch is worth taking (it is full, or its oldest message reached
``batch_timeout`` since it was sent), and whichever worker has room takes
it whole. One loop per process serves every such task, so that a worker
at rest sends the broker one blocking command per ``IDLE_SECONDS``
(``taking_waits.py``) for all of them:

* for each task with room (``core/room.py``'s ``room``: ``batch_concurrency``,
  ``max_concurrent_batches``, ``batch_max_keys``, the held bound),
  ``take`` up to that many batches; a task whose slots all run takes one
  *full* batch ahead to wait for a slot (``core/room.py``'s ``ahead``: the take
  overlaps the running batch), else it waits for a batch to end;
* each batch taken goes through the one lifecycle and the flush rules
  (``taken.Intake``): what is left of a batch taken by its deadline
  flushes at once; one taken full that lost messages stays open, and the
  next take of its key takes what it lacks;
* then, while messages wait but none is due, it sleeps until the nearest
  deadline or ``poll_seconds``; when nothing waits, it blocks in
  ``idle`` until a send wakes it (``taking_waits.py``).

A plain producer's messages of a served task are forwarded
(``worker/forwarding.py``). A stop ends the loop (a ``take`` in flight
finishes and its batches run). Errors of the broker are logged and
retried after a growing pause: they never stop the worker.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from taskiq import AsyncBroker

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.error_texts import describe
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.batch_source import BatchSource, Forwarder
from taskiq_batching.worker.forwarding import forward_read, route_forwards
from taskiq_batching.worker.lifecycle import Lifecycle
from taskiq_batching.worker.options import WorkerOptions
from taskiq_batching.worker.routing import Router
from taskiq_batching.worker.taken import Intake, log_per_worker
from taskiq_batching.worker.taking_waits import Waits

logger = logging.getLogger("taskiq_batching")

#: The shortest pause between two takes while messages wait (seconds): a
#: source that says "due now" without giving a batch does not make a busy loop.
MIN_PAUSE_SECONDS = 0.005
#: The first pause after a broker error, doubled per failure in a row (seconds).
BACKOFF_FIRST_SECONDS = 0.1
#: The longest pause after broker errors (seconds).
BACKOFF_MAX_SECONDS = 5.0


class Taker:
    """Takes whole batches from the broker for the tasks its source serves.

    :param broker: the broker (decodes messages).
    :param batcher: its batcher.
    :param lifecycle: accepts the messages taken.
    :param transport: the broker's transport (its ``batches`` and
        ``forwarder``, when it has them).
    :param router: the pump's router (hands to the Receiver, counts what
        is taken for ``--max-tasks-per-child``).
    :param options: the Receiver's settings.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: Batcher,
        lifecycle: Lifecycle,
        transport: Transport,
        router: Router,
        options: WorkerOptions,
    ) -> None:
        self.broker = broker
        self.batcher = batcher
        self.lifecycle = lifecycle
        self.router = router
        self.options = options
        self.source: BatchSource | None = getattr(transport, "batches", None)
        source = self.source
        self.specs = [
            spec
            for spec in batcher.specs.values()
            if source is not None and source.serves(spec)
        ]
        if source is not None:
            log_per_worker(batcher.specs.values(), self.specs)
        self.intake = Intake(broker, batcher, lifecycle, router)
        self.forwarder: Forwarder | None = getattr(transport, "forwarder", None)
        if self.forwarder is not None:
            route_forwards(router, self.forwarder, self.specs, batcher.specs.values())
        self._task: asyncio.Task[None] | None = None
        self._waits: Waits | None = None
        self._failures = 0
        #: Per task, the change a read-ahead that found nothing waits for.
        self._ahead_spent: dict[str, asyncio.Future[None]] = {}

    @property
    def active(self) -> bool:
        """Whether a task's batches are taken from the broker."""
        return bool(self.specs)

    @property
    def spent(self) -> bool:
        """Whether the process took its ``--max-tasks-per-child`` share."""
        limit = self.options.max_tasks
        return self.active and limit is not None and self.router.taken >= limit

    def start(self) -> None:
        """Start the loop (once, in the running event loop)."""
        if self.active and self._task is None:
            self._waits = waits = Waits()
            self._task = asyncio.ensure_future(self._run(waits))

    async def stop(self, deadline: float | None) -> None:
        """Stop taking; a take in flight finishes (its batches then run).

        :param deadline: event-loop time after which the take in flight is
            cancelled (its entries stay pending in the broker for a claim).
        """
        task, self._task = self._task, None
        if task is None or self._waits is None:
            return
        self._waits.stop()
        loop = asyncio.get_running_loop()
        timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "taskiq_batching: taking batches stopped on an error",
                exc_info=task.exception(),
            )

    # --- the loop ------------------------------------------------------------

    async def _run(self, waits: Waits) -> None:
        while not waits.stopped and not self.spent:
            try:
                await self._round(waits)
                self._failures = 0
            except Exception as exc:
                self._failures += 1
                pause = min(
                    BACKOFF_FIRST_SECONDS * 2 ** (self._failures - 1),
                    BACKOFF_MAX_SECONDS,
                )
                logger.error(
                    "taskiq_batching: taking batches from the broker failed "
                    "(%d in a row), trying again in %.1f s: %s",
                    self._failures,
                    pause,
                    describe(exc),
                )
                await waits.pause(pause)
        self.batcher.notify()  # the pump notices ``spent``

    async def _round(self, waits: Waits) -> None:
        """Take what is due for every task with room, then wait as what is left says."""
        source = self.source
        assert source is not None
        # Asked before any room is looked at: a batch that ends while this
        # round awaits its takes frees room that the wait below must see.
        change = self.batcher.changed()
        looked = await self._take_each(source, change)
        if looked is None or looked.took:
            return  # spent, or more may be due: take again at once
        wake = change if looked.blocked else None
        if looked.waits:
            shortest = min(min(looked.waits), source.poll_seconds)
            await waits.pause(max(shortest, MIN_PAUSE_SECONDS), wake)
        elif looked.quiet:
            await waits.until_woken(source, looked.quiet, wake)
        else:
            await waits.pause(None, change)

    async def _take_each(
        self, source: BatchSource, change: "asyncio.Future[None]"
    ) -> "_Looked | None":
        """One take per task (ahead, for a task without room).

        :return: what the takes said, or None once the process is spent.
        """
        looked = _Looked()
        for spec in self.specs:
            room = self.batcher.room(spec.task_name)
            if room == 0:
                looked.blocked = True
                looked.took = (
                    await self._take_ahead(source, spec, change) or looked.took
                )
            else:
                taken = await source.take(spec, room, self.intake.needs(spec) or None)
                if taken.batches:
                    looked.took = True
                    await self.intake.accept(taken.batches)
                if taken.wait_seconds is not None:
                    looked.waits.append(taken.wait_seconds)
                elif not taken.batches:
                    looked.quiet.append(spec)
            if self.spent:
                return None
        return looked

    async def _take_ahead(
        self, source: BatchSource, spec: BatchSpec, change: "asyncio.Future[None]"
    ) -> bool:
        """Take one full batch to wait for a slot of a task whose slots all run.

        Only a full one (``full_only``): a batch due by its timeout is left
        to a worker with a free slot, so that it starts without waiting for
        this worker's batch to end (the latency bound across the fleet).
        A take that found none is not made again before a change (a batch
        ended): one per batch at most, not one per round.

        :param source: the batch source.
        :param spec: a task with no room.
        :param change: resolved at the batcher's next change.
        :return: whether a batch was taken.
        """
        name = spec.task_name
        spent = self._ahead_spent.get(name)
        if (spent is not None and not spent.done()) or not self.batcher.ahead(name):
            return False
        taken = await source.take(spec, 1, None, full_only=True)
        if not taken.batches:
            self._ahead_spent[name] = change
            return False
        await self.intake.accept(taken.batches)
        return True

    async def forward(self) -> None:
        """Hand what the pump read of served tasks to the forwarder (``forwarding``)."""
        await forward_read(self.router, self.batcher, self.forwarder, self.source)


@dataclass
class _Looked:
    """What one round's takes said."""

    #: Seconds to the nearest deadline, per task with messages waiting.
    waits: list[float] = field(default_factory=list)
    #: Tasks with nothing waiting.
    quiet: list[BatchSpec] = field(default_factory=list)
    #: A task had no room (a batch ending may give it some).
    blocked: bool = False
    #: Something was taken.
    took: bool = False
