"""``BatchingMiddleware``: the one object a user adds to a broker."""

import logging
from typing import Any

from taskiq import (
    AsyncBroker,
    AsyncTaskiqDecoratedTask,
    InMemoryBroker,
    TaskiqMessage,
    TaskiqMiddleware,
)

from taskiq_batching import signals, worker
from taskiq_batching.config import FlushReason, is_batched
from taskiq_batching.engine import Batcher
from taskiq_batching.errors import BatchConfigError, MiddlewareMissingError
from taskiq_batching.task import BatchingDecoratedTask

logger = logging.getLogger("taskiq_batching")

_subclasses: dict[type[Any], type[BatchingDecoratedTask]] = {}


class BatchingMiddleware(TaskiqMiddleware):
    """Adds worker-side batching to a broker.

    >>> broker = RedisStreamBroker(url).with_middlewares(BatchingMiddleware())
    >>> @broker.task(batch=True, batch_size=100, batch_timeout=3)
    >>> async def insert_rows(rows: list[Row]) -> int: ...

    Each ``kiq(item)`` is one ordinary taskiq message. On the worker,
    messages of a batched task wait in a buffer (one per task and set of
    extra arguments) until it holds ``batch_size`` of them,
    ``batch_timeout`` seconds have passed since the first, or the worker
    shuts down; then the function runs once with the list, and every
    message gets the batch's outcome, ack and middlewares of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batcher: Batcher | None = None

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
        raise MiddlewareMissingError(
            f"{type(broker).__name__} has no BatchingMiddleware: create it with "
            "`.with_middlewares(BatchingMiddleware())`.",
        )

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
            if is_batched(task.labels)
        )
        if early:
            raise BatchConfigError(
                f"batched task(s) {', '.join(early)} were declared before "
                "BatchingMiddleware was added to the broker: add it first "
                "(`.with_middlewares(BatchingMiddleware())`).",
            )
        super().set_broker(broker)
        self.batcher = Batcher(broker)
        broker.decorator_class = _batching_class(broker.decorator_class)
        worker.install_listen_hook(broker, self.batcher)

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Keep taskiq from timing out a message that waits for its batch.

        The ``timeout`` label of a batched task limits the batch call
        instead (see ``BatchSpec.timeout``).

        :param message: an incoming message.
        :return: the same message.
        """
        if self.batcher is not None and message.task_name in self.batcher.specs:
            message.labels.pop("timeout", None)
        return message

    async def startup(self) -> None:
        """Prepare a worker process: make SIGTERM/SIGINT stop it promptly."""
        if self.batcher is not None:
            self.batcher.reopen()
        if self.broker.is_worker_process:
            signals.install_signal_wakeup()

    async def shutdown(self) -> None:
        """Flush every buffer and wait for those batches to finish."""
        if self.batcher is None:
            return
        await self.batcher.drain()
        if isinstance(self.broker, InMemoryBroker):
            # Messages whose batch just finished still store their results.
            await self.broker.wait_all()

    def flush(self) -> int:
        """Start a batch from every non-empty buffer now.

        Meant for tests and manual control; the batches run in the
        background (``InMemoryBroker.wait_all()`` waits for them).

        :return: number of batches started.
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

    async def wait_buffered(self, count: int, task_name: str | None = None) -> None:
        """Wait until at least ``count`` messages wait in buffers (for tests).

        :param count: the number of messages.
        :param task_name: count only this task's messages, when given.
        """
        if self.batcher is not None:
            await self.batcher.wait_buffered(count, task_name)


def _batching_class(base: type[Any]) -> type[BatchingDecoratedTask]:
    """The broker's task class, with batching mixed in."""
    if issubclass(base, BatchingDecoratedTask):
        return base
    if base is AsyncTaskiqDecoratedTask:
        return BatchingDecoratedTask
    if base not in _subclasses:
        _subclasses[base] = type(
            f"Batching{base.__name__}",
            (BatchingDecoratedTask, base),
            {"__module__": __name__},
        )
    return _subclasses[base]
