"""``BatchingMiddleware``: the one object a user adds to a broker."""

import asyncio
import datetime
import logging
from collections.abc import Sequence
from typing import Any

from taskiq import AsyncBroker, TaskiqMiddleware

from taskiq_batching._compat import guard_declarations, swap_task_class
from taskiq_batching.core.batcher import DEFAULT_MAX_CONCURRENT_BATCHES, Batcher
from taskiq_batching.core.events import BatchObserver, Observers
from taskiq_batching.core.statistics import Statistics, TaskStatistics
from taskiq_batching.errors import BatchConfigError, MiddlewareMissingError
from taskiq_batching.labels import BATCH_LABEL, wants_batching
from taskiq_batching.settings import FlushReason
from taskiq_batching.tasks import adopt, batching_class
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.consumer import Owning
from taskiq_batching.waiting import drop_sender
from taskiq_batching.worker import hook, signals

logger = logging.getLogger("taskiq_batching")


class BatchingMiddleware(TaskiqMiddleware):
    """Adds worker-side batching to a broker.

    >>> broker = RedisStreamBroker(url).with_middlewares(BatchingMiddleware())
    >>> @broker.task(batch=True, batch_size=100, batch_timeout=3)
    >>> async def insert_rows(rows: list[Row]) -> int: ...

    Each ``kiq(item)`` is one ordinary taskiq message. On the worker,
    messages of a batched task wait in a buffer (one per task and set of
    extra arguments) until it holds ``batch_size`` of them,
    ``batch_timeout`` seconds have passed since the first, or the worker
    stops; then the function runs once with the list, and every message
    gets its share of the outcome, its own ack and its own middleware
    calls. Tasks without ``batch=True`` are left to taskiq, untouched.

    :param max_concurrent_batches: batch calls that may run at once in one
        worker process, over all batched tasks (each task also has its own
        ``batch_concurrency``).
    :param observers: told of every flush and finished batch (metrics
        exporters, see ``taskiq_batching.metrics``); more can be added with
        ``observe``.
    :param error_values: show the values that fail (an invalid item or
        argument, a policy function's error text) in ``BatchItemError``,
        so in logs and stored results. Off by default: an item may carry a
        secret (a ``SecretStr``, a field declared ``repr=False``) that its
        raw form shows; errors then name the message, the argument, the
        field path and the validation error's type only.
    :param wait_in_broker: on a broker whose transport can (its
        ``batches``), batched tasks' messages wait in the broker until a
        batch is worth taking (full, or ``batch_timeout`` after its oldest
        message was sent), and whichever worker has room takes it whole:
        N workers fill batches as one (Redis streams; NATS). Opt in with
        True (workers first, then producers: docs/several-workers.md):
        None (the default) and False keep each worker reading and
        buffering on its own, as on every other broker (docs/fleet.md
        says what is built and measured).
    :raises BatchConfigError: when ``max_concurrent_batches`` is not an int
        >= 1, or ``wait_in_broker`` not True, False or None.
    """

    def __init__(
        self,
        max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
        observers: Sequence[BatchObserver] = (),
        error_values: bool = False,
        wait_in_broker: bool | None = None,
    ) -> None:
        super().__init__()
        if (
            isinstance(max_concurrent_batches, bool)
            or not isinstance(max_concurrent_batches, int)
            or max_concurrent_batches < 1
        ):
            raise BatchConfigError(
                "BatchingMiddleware: max_concurrent_batches must be an int >= 1 "
                f"(batch calls), got {max_concurrent_batches!r}.",
            )
        self.max_concurrent_batches = max_concurrent_batches
        self.error_values = bool(error_values)
        if wait_in_broker is not None and not isinstance(wait_in_broker, bool):
            raise BatchConfigError(
                "BatchingMiddleware: wait_in_broker must be True, False or None, "
                f"got {wait_in_broker!r}.",
            )
        self.wait_in_broker = wait_in_broker
        self.batcher: Batcher | None = None
        self._observers = list(observers)
        #: Those the batcher tells (``_observers`` and the statistics).
        self._observing = Observers()
        #: The worker's transports, made for this broker (closed at shutdown).
        self._opened: list[Transport] = []

    @classmethod
    def of(cls, broker: AsyncBroker) -> "BatchingMiddleware":
        """The ``BatchingMiddleware`` of a broker.

        :param broker: a broker set up with ``BatchingMiddleware()``.
        :raises MiddlewareMissingError: when it has none.
        :return: its middleware.
        """
        for middleware in broker.middlewares:
            if isinstance(middleware, cls):
                return middleware
        raise MiddlewareMissingError(_missing(type(broker).__name__))

    def set_broker(self, broker: AsyncBroker) -> None:
        """Attach to a broker: called by ``with_middlewares``.

        :param broker: the broker.
        :raises BatchConfigError: when attached twice, or when batched tasks
            were declared on the broker before this middleware was added.
        """
        if self.batcher is not None and self.broker is not broker:
            raise BatchConfigError("a BatchingMiddleware serves one broker only.")
        if any(isinstance(m, BatchingMiddleware) for m in broker.middlewares):
            raise BatchConfigError("the broker already has a BatchingMiddleware.")
        early = sorted(
            name
            for name, task in broker.local_task_registry.items()
            if task.labels.get(BATCH_LABEL) is True
        )
        if early:
            raise BatchConfigError(
                f"batched task(s) {', '.join(early)} were declared before "
                "BatchingMiddleware was added to the broker: add it first "
                "(`.with_middlewares(BatchingMiddleware())`).",
            )
        super().set_broker(broker)
        observers = Observers()
        self.batcher = Batcher(
            broker,
            self.max_concurrent_batches,
            observers,
            error_values=self.error_values,
        )
        # Statistics read the batcher's counts: made once it exists.
        self._statistics = Statistics(self.batcher)
        for observer in (self._statistics, *self._observers):
            observers.add(observer)
        self._observing = observers
        swap_task_class(broker, batching_class)
        hook.attach(
            broker,
            self.batcher,
            self._opened.append,
            wait_in_broker=self.wait_in_broker,
        )

    def observe(self, observer: BatchObserver) -> None:
        """Tell an observer of every flush and finished batch from now on.

        :param observer: for example a metrics exporter.
        """
        self._observers.append(observer)
        self._observing.add(observer)

    def statistics(self) -> dict[str, TaskStatistics]:
        """What each batched task did in this process (see ``TaskStatistics``).

        :return: statistics by task name, for every batched task declared.
        """
        if self.batcher is None:
            return {}
        return {name: self._statistics.of(name) for name in self.batcher.specs}

    async def startup(self) -> None:
        """Prepare the process: a worker also notices SIGTERM/SIGINT at once."""
        if self.batcher is not None:
            self.batcher.reopen()
        if self.broker.is_worker_process:
            signals.install_signal_wakeup()

    async def shutdown(self) -> None:
        """Flush every buffer and wait for those batches to finish.

        On a worker the pump has done it already when the Receiver stopped;
        on ``InMemoryBroker`` this is where buffered messages are flushed.
        Plain tasks still running are not waited for, as without the plugin.
        Then the clients the plugin opened for this broker are closed (a
        Redis sentinel's master client): taskiq's Receiver has finished the
        callbacks that acked through them.
        """
        if self.batcher is None:
            return
        await self.batcher.drain(deadline=None)
        opened = list(self._opened)
        self._opened.clear()
        for transport in opened:
            if isinstance(transport, Owning):
                await transport.shutdown()
        sender = drop_sender(self.broker)
        if sender is not None:
            await sender.shutdown()

    def flush(self) -> int:
        """Flush every non-empty buffer now (for tests and manual control).

        The batches run in the background (``InMemoryBroker.wait_all()``
        waits for them).

        :return: the number of batches flushed.
        """
        if self.batcher is None:
            return 0
        return self.batcher.flush_all(FlushReason.MANUAL)

    def buffered(self, task_name: str | None = None) -> int:
        """Messages waiting in this process's buffers.

        :param task_name: count only this task's messages, when given.
        :return: the number of buffered messages.
        """
        return 0 if self.batcher is None else self.batcher.buffered(task_name)

    async def wait_buffered(
        self,
        count: int,
        task_name: str | None = None,
        timeout: float | datetime.timedelta | None = None,
    ) -> None:
        """Wait until at least ``count`` messages wait in buffers (for tests).

        :param count: the number of messages.
        :param task_name: count only this task's messages, when given.
        :param timeout: give up after this many seconds, or this timedelta
            (``asyncio.TimeoutError``).
        """
        if isinstance(timeout, datetime.timedelta):
            timeout = timeout.total_seconds()
        if self.batcher is not None:
            await asyncio.wait_for(
                self.batcher.wait_buffered(count, task_name), timeout
            )


def _missing(where: str) -> str:
    return (
        f"{where} has no BatchingMiddleware: create the broker with "
        "`.with_middlewares(BatchingMiddleware())` before declaring batched tasks."
    )


def _check_declaration(broker: AsyncBroker, task: Any) -> None:
    """A batched task is refused without the middleware, adopted with it.

    ``adopt`` takes over one that taskiq built without the broker's task
    class (``_compat.swap_task_class``).
    """
    labels = getattr(task, "labels", None) or {}
    if labels.get(BATCH_LABEL) is not True:
        return
    if not any(isinstance(m, BatchingMiddleware) for m in broker.middlewares):
        name = getattr(task, "task_name", "?")
        wants_batching(name, labels)
        raise MiddlewareMissingError(
            f"batched task {name!r}: " + _missing(type(broker).__name__),
        )
    if getattr(task, "broker", None) is broker:  # else taskiq refuses it
        adopt(task)


guard_declarations(_check_declaration)
