"""Batched tasks: declared, checked and registered; ``map`` of many items.

The typed API (``batch_task``, ``BatchedTask``) is in ``typed.py``.
"""

import datetime
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask
from taskiq.kicker import AsyncKicker

from taskiq_batching import _compat
from taskiq_batching.core.analysis import analyse
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.errors import (
    BatchConfigError,
    BatchingError,
    MiddlewareMissingError,
)
from taskiq_batching.kicker import BatchKicker
from taskiq_batching.labels import wants_batching
from taskiq_batching.mapping import (
    DEFAULT_CHUNK_SIZE,
    KillSwitch,
    MapEntry,
    MapOptions,
    map_task,
)
from taskiq_batching.results import item_result_type
from taskiq_batching.settings import parse_settings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.validation import task_ack_type, task_timeout

_subclasses: dict[type[Any], type["BatchingDecoratedTask"]] = {}


class BatchingDecoratedTask(AsyncTaskiqDecoratedTask[Any, Any]):
    """The task class ``BatchingMiddleware`` makes ``@broker.task`` build.

    A task without ``batch=True`` is taskiq's own, unchanged. A batched
    task is checked here, when it is declared, and registered with the
    broker's batcher; calling it directly calls the batch function with a
    list.
    """

    batch_spec: BatchSpec | None = None

    def __init__(
        self,
        broker: AsyncBroker,
        task_name: str,
        original_func: Callable[..., Any],
        labels: dict[str, Any],
        return_type: type[Any] | None = None,
    ) -> None:
        batched = wants_batching(task_name, labels)
        super().__init__(
            broker=broker,
            task_name=task_name,
            original_func=original_func,
            labels=labels,
            return_type=return_type,
        )
        if batched:
            _set_up(self)

    async def map(
        self,
        items: Iterable[Any],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        kill_switch: KillSwitch | None = None,
        timeout: float | datetime.timedelta | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> list[MapEntry]:
        """Send items in chunks, waiting for each chunk's results; stop on a switch.

        :param items: elements of the batch function's list, one per message.
        :param chunk_size: items per chunk, each sent with ``kiq_many``.
        :param kill_switch: stops sending when it trips (``AnyFailed()``,
            ``CountExceeded(n)``, ``RateExceeded(ratio, min_count)``).
        :param timeout: seconds (or a timedelta) to wait for each result;
            past it the map stops and returns what finished.
        :param args: the batch function's further arguments (for all items).
        :param kwargs: its further keyword arguments (for all items).
        :raises ResultBackendMissingError: when the broker keeps no results.
        :raises KillSwitchTypeError: when ``kill_switch`` is not a kill switch.
        :return: in input order, each item's result, or ``NotFinished`` (sent,
            no result in time) or ``NotSent`` (never sent).
        """
        options = MapOptions(chunk_size, kill_switch, timeout, args, kwargs)
        return await map_task(self, items, options)

    def kicker(self) -> AsyncKicker[Any, Any]:
        """A kicker; a batched task's checks that ``kiq`` is given one item."""
        kicker = super().kicker()
        if self.batch_spec is None:
            return kicker
        return BatchKicker(kicker, self.batch_spec.signature, self.batch_spec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function in this process (a batch function: with a list)."""
        if self.batch_spec is not None:
            return self.batch_spec.signature.func(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def batcher_of(broker: AsyncBroker) -> Batcher | None:
    """The batcher ``BatchingMiddleware`` attached to a broker, if any.

    :param broker: any taskiq broker.
    :return: its batcher, or None without ``BatchingMiddleware``.
    """
    for middleware in broker.middlewares:
        batcher = getattr(middleware, "batcher", None)
        if isinstance(batcher, Batcher):
            return batcher
    return None


def batching_class(base: type[Any]) -> type[BatchingDecoratedTask]:
    """A broker's task class, with batching mixed in.

    :param base: the class the broker builds its tasks with.
    :return: ``BatchingDecoratedTask``, or a subclass of it and ``base``.
    """
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


def adopt(task: AsyncTaskiqDecoratedTask[Any, Any]) -> None:
    """Make a batched task that taskiq built with another class batch all the same.

    ``BatchingMiddleware`` makes ``@broker.task`` build its tasks with a
    batching class (``_compat.swap_task_class``). A task built otherwise
    (taskiq's open PR #618 builds tasks without ``decorator_class``; so
    does a ``decorator_class`` set after the middleware was added) would
    run its batch function once per message, with one item: it takes the
    batching class here, when it is registered or when the worker starts.

    :param task: a task with ``batch=True``, on a broker with the middleware.
    :raises BatchConfigError: when its class cannot be taken over.
    """
    if isinstance(task, BatchingDecoratedTask):
        return
    name = task.task_name
    wants_batching(name, task.labels)
    _compat.retype_task(task, batching_class(type(task)))
    if not isinstance(task, BatchingDecoratedTask):
        raise BatchConfigError(
            f"batched task {name!r}: taskiq built it as {type(task).__name__}, "
            "a class taskiq-batching cannot take over: use a taskiq version "
            "taskiq-batching supports (its pyproject.toml's bounds).",
        )
    _set_up(task)


def _set_up(task: BatchingDecoratedTask) -> None:
    """Check a batched task and register it with its broker's batcher."""
    task_name, labels = task.task_name, task.labels
    batcher = batcher_of(task.broker)
    if batcher is None:  # pragma: no cover - the middleware installs us
        raise MiddlewareMissingError(f"batched task {task_name!r}: no batcher")
    spec = BatchSpec(
        task_name=task_name,
        settings=parse_settings(task_name, labels),
        signature=analyse(task_name, task.original_func),
        timeout=task_timeout(task_name, labels),
    )
    task_ack_type(task_name, labels)
    batcher.register(spec)
    task.batch_spec = spec
    # A message's result is one element of a per-item result.
    task.return_type = item_result_type(task.return_type)
    task.original_func = _unrouted(task_name)


def _unrouted(task_name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    # What taskiq's Receiver would run for a batched message the plugin did
    # not route (a Receiver it never saw): fail that message clearly.
    async def batched_task(*args: Any, **kwargs: Any) -> Any:
        raise BatchingError(
            f"a message of batched task {task_name!r} reached taskiq's "
            "per-message callback: batched tasks run on a worker started by "
            "`taskiq worker` (or a taskiq Receiver listening to the broker) "
            "and on InMemoryBroker",
        )

    batched_task.__qualname__ = f"batched_task[{task_name}]"
    return batched_task
