"""The typed API of batched tasks: ``batch_task``, which makes a ``BatchedTask``.

``@broker.task(batch=True, ...)`` works too, but type checkers see taskiq's
own task type there, whose ``kiq`` takes the function's list; a
``BatchedTask`` (``batched_task.py``) shows that ``kiq`` takes one item.
"""

import datetime
from collections.abc import Callable, Hashable
from typing import Any, Concatenate, ParamSpec, TypeVar

from taskiq import AsyncBroker

from taskiq_batching.batched_task import BatchedTask
from taskiq_batching.errors import MiddlewareMissingError
from taskiq_batching.labels import (
    BATCH_CONCURRENCY_LABEL,
    BATCH_COST_LABEL,
    BATCH_ISOLATE_LABEL,
    BATCH_KEY_CONCURRENCY_LABEL,
    BATCH_KEY_LABEL,
    BATCH_LABEL,
    BATCH_MAX_BYTES_LABEL,
    BATCH_MAX_COST_LABEL,
    BATCH_MAX_KEYS_LABEL,
    BATCH_MAX_WAIT_LABEL,
    BATCH_MIN_SIZE_LABEL,
    BATCH_SIZE_LABEL,
    BATCH_TIMEOUT_LABEL,
    BATCH_WHERE_LABEL,
)
from taskiq_batching.tasks import batcher_of

_Item = TypeVar("_Item")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def batch_task(
    broker: AsyncBroker,
    *,
    batch_size: int | None = None,
    batch_timeout: float | datetime.timedelta | None = None,
    batch_isolate: bool = False,
    batch_concurrency: int | None = None,
    batch_key: Callable[[Any], Hashable] | str | None = None,
    batch_max_keys: int | None = None,
    batch_key_concurrency: int | None = None,
    batch_cost: Callable[[Any], float] | str | None = None,
    batch_max_cost: float | None = None,
    batch_max_bytes: int | None = None,
    batch_min_size: int | None = None,
    batch_max_wait: float | datetime.timedelta | None = None,
    batch_where: Callable[[Any], bool] | str | None = None,
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
    :param batch_key: items with different keys never share a batch: a
        function of the item, or the name of one of its fields.
    :param batch_max_keys: open keys (buffers) per worker process; a new
        key past it flushes the oldest (default: no bound but the task's).
    :param batch_key_concurrency: batch calls of one key at once.
    :param batch_cost: an item's cost (a function of the item, or a field).
    :param batch_max_cost: a batch's cost budget: a buffer flushes before
        an item would exceed it; an item over it alone runs alone.
    :param batch_max_bytes: a batch's messages' wire bytes at most: a
        buffer flushes before a message would exceed it; a bigger message
        runs alone.
    :param batch_min_size: a timer does not flush a buffer smaller than
        this before ``batch_max_wait``...
    :param batch_max_wait: ...seconds (>= ``batch_timeout``) after its first
        message.
    :param batch_where: items for which it is false are finished without
        running (result ``None``, labelled ``batch_filtered``): a predicate
        on the item, or the name of one of its fields (read as a bool).
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
    given = {
        BATCH_SIZE_LABEL: batch_size,
        BATCH_TIMEOUT_LABEL: batch_timeout,
        BATCH_ISOLATE_LABEL: batch_isolate or None,
        BATCH_CONCURRENCY_LABEL: batch_concurrency,
        BATCH_KEY_LABEL: batch_key,
        BATCH_MAX_KEYS_LABEL: batch_max_keys,
        BATCH_KEY_CONCURRENCY_LABEL: batch_key_concurrency,
        BATCH_COST_LABEL: batch_cost,
        BATCH_MAX_COST_LABEL: batch_max_cost,
        BATCH_MAX_BYTES_LABEL: batch_max_bytes,
        BATCH_MIN_SIZE_LABEL: batch_min_size,
        BATCH_MAX_WAIT_LABEL: batch_max_wait,
        BATCH_WHERE_LABEL: batch_where,
    }
    labels.update({name: value for name, value in given.items() if value is not None})

    def decorate(
        func: Callable[Concatenate[list[_Item], _P], _R],
    ) -> BatchedTask[_Item, _P, _R]:
        return BatchedTask(broker.task(task_name, **labels)(func))

    return decorate
