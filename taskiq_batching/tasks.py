"""Batched tasks: declaration, and the typed API (``batch_task``, ``BatchedTask``)."""

import datetime
from collections.abc import Callable, Coroutine, Iterable
from types import CoroutineType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, AsyncTaskiqTask
from taskiq.kicker import AsyncKicker

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.core.run import BatchSpec
from taskiq_batching.core.signature import analyse
from taskiq_batching.errors import BatchingError, MiddlewareMissingError
from taskiq_batching.producer import send_many
from taskiq_batching.results import PerItem, item_result_type
from taskiq_batching.settings import (
    BATCH_CONCURRENCY_LABEL,
    BATCH_ISOLATE_LABEL,
    BATCH_LABEL,
    BATCH_SIZE_LABEL,
    BATCH_TIMEOUT_LABEL,
    parse_settings,
    wants_batching,
)
from taskiq_batching.validation import task_ack_type, task_timeout

_Item = TypeVar("_Item")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


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
        if batched:
            # A message's result is one element of a per-item result.
            return_type = item_result_type(return_type)
        super().__init__(
            broker=broker,
            task_name=task_name,
            original_func=original_func,
            labels=labels,
            return_type=return_type,
        )
        if batched:
            batcher = batcher_of(broker)
            if batcher is None:  # pragma: no cover - the middleware installs us
                raise MiddlewareMissingError(f"batched task {task_name!r}: no batcher")
            spec = BatchSpec(
                task_name=task_name,
                settings=parse_settings(task_name, labels),
                signature=analyse(task_name, original_func),
                timeout=task_timeout(task_name, labels),
            )
            task_ack_type(task_name, labels)
            batcher.register(spec)
            self.batch_spec = spec
            self.original_func = _unrouted(task_name)

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


class BatchedTask(Generic[_Item, _P, _R]):
    """A batched task, typed for senders: ``kiq`` takes ONE item.

    Made by :func:`batch_task`. ``_Item`` is the element type of the batch
    function's list, ``_P`` its other parameters, ``_R`` its return type.
    A message's result is ``_R``, or ``T`` when the function returns
    ``PerItem[T]`` (see :func:`per_item`).

    :param task: the task registered on the broker.
    """

    def __init__(self, task: AsyncTaskiqDecoratedTask[Any, Any]) -> None:
        self.task = task

    @property
    def task_name(self) -> str:
        """The task's name on the broker."""
        return self.task.task_name

    @property
    def labels(self) -> dict[str, Any]:
        """The task's labels, batch settings included."""
        return self.task.labels

    def __call__(self, items: list[_Item], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call the batch function directly, in this process, with a list."""
        return self.task(items, *args, **kwargs)  # type: ignore[no-any-return]

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, CoroutineType[Any, Any, PerItem[_T]]]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_T]: ...

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, Coroutine[Any, Any, PerItem[_T]]]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_T]: ...

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, PerItem[_T]]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_T]: ...

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, CoroutineType[Any, Any, _T]]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_T]: ...

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, Coroutine[Any, Any, _T]]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_T]: ...

    @overload
    async def kiq(
        self: "BatchedTask[_Item, _P, _R]",
        item: _Item,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncTaskiqTask[_R]: ...

    async def kiq(self, item: Any, *args: Any, **kwargs: Any) -> Any:
        """Send one item; its result is the result of the batch it joins.

        :param item: one element of the batch function's list.
        :param args: the batch function's further arguments.
        :param kwargs: the batch function's further keyword arguments.
        :return: the taskiq task of this message.
        """
        return await self.task.kiq(item, *args, **kwargs)

    @overload
    async def kiq_many(
        self: "BatchedTask[_Item, _P, CoroutineType[Any, Any, PerItem[_T]]]",
        items: Iterable[_Item],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> list[AsyncTaskiqTask[_T]]: ...

    @overload
    async def kiq_many(
        self: "BatchedTask[_Item, _P, Coroutine[Any, Any, PerItem[_T]]]",
        items: Iterable[_Item],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> list[AsyncTaskiqTask[_T]]: ...

    @overload
    async def kiq_many(
        self: "BatchedTask[_Item, _P, CoroutineType[Any, Any, _T]]",
        items: Iterable[_Item],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> list[AsyncTaskiqTask[_T]]: ...

    @overload
    async def kiq_many(
        self: "BatchedTask[_Item, _P, Coroutine[Any, Any, _T]]",
        items: Iterable[_Item],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> list[AsyncTaskiqTask[_T]]: ...

    @overload
    async def kiq_many(
        self: "BatchedTask[_Item, _P, _R]",
        items: Iterable[_Item],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> list[AsyncTaskiqTask[_R]]: ...

    async def kiq_many(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        """Send many items, one ordinary message each, in few round trips.

        :param items: elements of the batch function's list, one per message.
        :param args: the batch function's further arguments (for all items).
        :param kwargs: its further keyword arguments (for all items).
        :return: one taskiq task per item, in order.
        """
        return await send_many(self.task.kicker(), items, args, kwargs)

    def kicker(self) -> AsyncKicker[Concatenate[_Item, _P], _R]:
        """A kicker, to set labels or a task_id before sending one item."""
        return self.task.kicker()

    def __repr__(self) -> str:
        return f"BatchedTask({self.task_name})"


def batch_task(
    broker: AsyncBroker,
    *,
    batch_size: int | None = None,
    batch_timeout: float | datetime.timedelta | None = None,
    batch_isolate: bool = False,
    batch_concurrency: int | None = None,
    task_name: str | None = None,
    **labels: Any,
) -> Callable[[Callable[Concatenate[list[_Item], _P], _R]], BatchedTask[_Item, _P, _R]]:
    """Declare a batched task with a typed ``kiq(item)``.

    The same as ``@broker.task(batch=True, batch_size=..., batch_timeout=...)``,
    but type checkers see that ``kiq`` takes one item, not a list.

    :param broker: a broker with ``BatchingMiddleware``.
    :param batch_size: flush a buffer at this many messages (default 100
        when only ``batch_timeout`` is given).
    :param batch_timeout: flush a buffer this many seconds after its first
        message (default: never, size-only batching).
    :param batch_isolate: when a batch raises, find and fail only the
        failing items by re-running halves of it (extra calls).
    :param batch_concurrency: batch calls of this task that may run at once
        in one worker process (default 1).
    :param task_name: the task's name (default: module and function name).
    :param labels: other taskiq labels (``timeout``, ``ack_type``, ...).
    :raises MiddlewareMissingError: when the broker has no BatchingMiddleware.
    :return: a decorator.
    """
    if batcher_of(broker) is None:
        raise MiddlewareMissingError(
            f"batched task {task_name or '<unnamed>'!r}: {type(broker).__name__} "
            "has no BatchingMiddleware: create the broker with "
            "`.with_middlewares(BatchingMiddleware())` first.",
        )
    labels[BATCH_LABEL] = True
    if batch_size is not None:
        labels[BATCH_SIZE_LABEL] = batch_size
    if batch_timeout is not None:
        labels[BATCH_TIMEOUT_LABEL] = batch_timeout
    if batch_isolate:
        labels[BATCH_ISOLATE_LABEL] = True
    if batch_concurrency is not None:
        labels[BATCH_CONCURRENCY_LABEL] = batch_concurrency

    def decorate(
        func: Callable[Concatenate[list[_Item], _P], _R],
    ) -> BatchedTask[_Item, _P, _R]:
        return BatchedTask(broker.task(task_name, **labels)(func))

    return decorate
