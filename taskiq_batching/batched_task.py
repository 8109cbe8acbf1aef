"""``BatchedTask``: a batched task typed for senders, ``kiq`` takes one item.

Made by ``batch_task`` (``typed.py``). The overloads read the batch
function's return type: a message's result is ``_R``, or ``T`` when the
function returns ``PerItem[T]``.
"""

import datetime
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import CoroutineType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from taskiq import AsyncTaskiqDecoratedTask, AsyncTaskiqTask
from taskiq.kicker import AsyncKicker

from taskiq_batching.mapping import (
    DEFAULT_CHUNK_SIZE,
    KillSwitch,
    MapEntry,
    MapOptions,
    map_task,
)
from taskiq_batching.producer import send_many
from taskiq_batching.results import PerItem

_Item = TypeVar("_Item")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


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
        """The task's labels, batch settings included (never sent with a message)."""
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

    async def map(
        self,
        items: Iterable[_Item],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        kill_switch: KillSwitch | None = None,
        timeout: float | datetime.timedelta | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> list[MapEntry]:
        """Send items in chunks, waiting for each chunk's results; stop on a switch.

        Each chunk is sent with ``kiq_many``; ``@broker.task(batch=True)``
        tasks have the same ``map``, untyped.

        :param items: elements of the batch function's list, one per message.
        :param chunk_size: items per chunk.
        :param kill_switch: stops sending when it trips (``AnyFailed()``,
            ``CountExceeded(n)``, ``RateExceeded(ratio, min_count)``).
        :param timeout: seconds (or a timedelta) to wait for each result;
            past it the map stops and returns what finished.
        :param args: the batch function's further arguments.
        :param kwargs: its further keyword arguments.
        :raises ResultBackendMissingError: when the broker keeps no results.
        :raises KillSwitchTypeError: when ``kill_switch`` is not a kill switch.
        :return: in input order, each item's result, or ``NotFinished`` (sent,
            no result in time) or ``NotSent`` (never sent).
        """
        options = MapOptions(chunk_size, kill_switch, timeout, args, kwargs)
        return await map_task(self.task, items, options)

    def kicker(self) -> AsyncKicker[Concatenate[_Item, _P], _R]:
        """A kicker, to set labels or a task_id before sending one item."""
        return self.task.kicker()

    def __repr__(self) -> str:
        return f"BatchedTask({self.task_name})"
