"""Batched tasks: registration, the per-message entry point, a typed API."""

from collections.abc import Callable, Coroutine, Iterable
from types import CoroutineType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, AsyncTaskiqTask, Context
from taskiq.kicker import AsyncKicker
from taskiq_dependencies import Depends

from taskiq_batching.config import (
    BATCH_ISOLATE_LABEL,
    BATCH_LABEL,
    BATCH_SIZE_LABEL,
    BATCH_TIMEOUT_LABEL,
    is_batched,
    parse_batch_labels,
)
from taskiq_batching.engine import Batcher, batcher_of
from taskiq_batching.errors import BatchConfigError, MiddlewareMissingError
from taskiq_batching.producer import send_many
from taskiq_batching.results import PerItem, item_result_type
from taskiq_batching.runner import BatchSpec
from taskiq_batching.signature import analyse

_Item = TypeVar("_Item")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


class BatchingDecoratedTask(AsyncTaskiqDecoratedTask[Any, Any]):
    """The task class ``BatchingMiddleware`` makes ``@broker.task`` build.

    Tasks without batch labels behave exactly as taskiq's own. A task
    with ``batch=True`` is checked here, at decoration time, and its
    registered function becomes a per-message entry point that hands the
    item to the batcher; calling the task directly still calls the batch
    function with a list.
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
        if is_batched(labels):
            # A message's result is one element of a per-item result.
            return_type = item_result_type(return_type)
        super().__init__(
            broker=broker,
            task_name=task_name,
            original_func=original_func,
            labels=labels,
            return_type=return_type,
        )
        if is_batched(labels):
            batcher = batcher_of(broker)
            if batcher is None:  # pragma: no cover - the middleware installs us
                raise MiddlewareMissingError(_missing_middleware(task_name))
            adopt(self, batcher)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function in this process (a batch function: with a list)."""
        if self.batch_spec is not None:
            return self.batch_spec.signature.func(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def adopt(task: BatchingDecoratedTask, batcher: Batcher) -> None:
    """Validate a batched task and route its messages to the batcher.

    :param task: a task whose labels ask for batching.
    :param batcher: the broker's batcher.
    :raises BatchConfigError: when its settings or its function are invalid.
    """
    spec = BatchSpec(
        task_name=task.task_name,
        config=parse_batch_labels(task.task_name, task.labels),
        signature=analyse(task.task_name, task.original_func),
        timeout=_timeout_label(task.task_name, task.labels.get("timeout")),
    )
    batcher.register(spec)
    task.batch_spec = spec
    task.original_func = _entry_point(batcher, task.task_name)


def _entry_point(batcher: Batcher, task_name: str) -> Callable[..., Any]:
    # taskiq's Receiver calls this once per message, with that message's
    # arguments and context; its acks, results and middlewares stay per
    # message because they happen around this call.
    async def batched_entry(
        *args: Any,
        _taskiq_batching_context: Context = Depends(),
        **kwargs: Any,
    ) -> Any:
        return await batcher.submit(task_name, _taskiq_batching_context, args, kwargs)

    batched_entry.__qualname__ = batched_entry.__name__ = f"batched_entry[{task_name}]"
    return batched_entry


def _timeout_label(task_name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise BatchConfigError(
            f"batched task {task_name!r}: the timeout label must be a number of "
            f"seconds > 0, got {value!r}.",
        )
    return timeout


def _missing_middleware(task_name: str) -> str:
    return (
        f"batched task {task_name!r}: the broker has no BatchingMiddleware; "
        "create it with `.with_middlewares(BatchingMiddleware())` before "
        "declaring batched tasks."
    )


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
    batch_timeout: float | None = None,
    batch_isolate: bool = False,
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
    :param task_name: the task's name (default: module and function name).
    :param labels: other taskiq labels (``timeout``, ``ack_type``, ...).
    :raises MiddlewareMissingError: when the broker has no BatchingMiddleware.
    :return: a decorator.
    """
    if batcher_of(broker) is None:
        raise MiddlewareMissingError(_missing_middleware(task_name or "<unnamed>"))
    labels[BATCH_LABEL] = True
    if batch_size is not None:
        labels[BATCH_SIZE_LABEL] = batch_size
    if batch_timeout is not None:
        labels[BATCH_TIMEOUT_LABEL] = batch_timeout
    if batch_isolate:
        labels[BATCH_ISOLATE_LABEL] = True

    def decorate(
        func: Callable[Concatenate[list[_Item], _P], _R],
    ) -> BatchedTask[_Item, _P, _R]:
        return BatchedTask(broker.task(task_name, **labels)(func))

    return decorate
