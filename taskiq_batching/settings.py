"""What a batched task's settings are: validated values, defaults, flush reasons.

A task declares its settings as labels (their names: ``labels.py``);
``parse_settings`` checks them once, when the task is declared, into a
``BatchSettings``, the only form the rest of the package reads. Each
``FlushReason`` but ``shutdown``, ``manual`` and ``inplace`` is one of
these settings reached.
"""

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from taskiq_batching.errors import BatchConfigError
from taskiq_batching.labels import (
    BATCH_CONCURRENCY_LABEL,
    BATCH_COST_LABEL,
    BATCH_ISOLATE_LABEL,
    BATCH_KEY_CONCURRENCY_LABEL,
    BATCH_KEY_LABEL,
    BATCH_MAX_BYTES_LABEL,
    BATCH_MAX_COST_LABEL,
    BATCH_MAX_KEYS_LABEL,
    BATCH_MAX_WAIT_LABEL,
    BATCH_MIN_SIZE_LABEL,
    BATCH_SIZE_LABEL,
    BATCH_TIMEOUT_LABEL,
    BATCH_WHERE_LABEL,
    MESSAGE_LABELS,
    SETTING_LABELS,
)
from taskiq_batching.validation import (
    ItemFunction,
    budget,
    count,
    item_function,
    seconds,
    wire_bytes,
)

_V = TypeVar("_V")

#: ``batch_size`` of a task that only sets ``batch_timeout``.
DEFAULT_BATCH_SIZE = 100
#: ``batch_concurrency`` of a task that does not set it.
DEFAULT_BATCH_CONCURRENCY = 1
#: Wire bytes of a task's messages a worker process holds at most, when the
#: task sets no ``batch_max_bytes``.
DEFAULT_MAX_HELD_BYTES = 64 * 1024 * 1024


class FlushReason(str, enum.Enum):
    """Why a buffer was turned into a batch."""

    #: The buffer reached ``batch_size``.
    SIZE = "size"
    #: ``batch_timeout`` seconds passed since the buffer's first message.
    TIMEOUT = "timeout"
    #: The worker (or the broker) is shutting down.
    SHUTDOWN = "shutdown"
    #: The worker holds all it may hold (its bound, or the broker's
    #: prefetch) and every held message waits in a buffer.
    PRESSURE = "pressure"
    #: ``InMemoryBroker(await_inplace=True)``: the sender waits for the result.
    INPLACE = "inplace"
    #: Flushed on request (``BatchingMiddleware.flush``).
    MANUAL = "manual"
    #: A new key would exceed ``batch_max_keys``: the oldest buffer flushed.
    KEYS = "keys"
    #: One more item would exceed ``batch_max_cost`` (or one item alone does).
    COST = "cost"
    #: An item's ``batch_deadline`` is near: its batch starts now.
    DEADLINE = "deadline"
    #: One more message would exceed ``batch_max_bytes`` (or one alone does).
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Validated batch settings of one task.

    :param batch_size: flush a buffer when it holds this many messages.
    :param batch_timeout: flush a buffer this many seconds after its first
        message arrived, or never when ``None`` (size-only batching).
    :param isolate: when a batch raises, re-run halves of it to find the
        failing items and fail only those.
    :param concurrency: batch calls of the task that may run at once in
        one worker process.
    :param key: items with different keys never share a batch.
    :param max_keys: open buffers (keys) of the task per worker process;
        one more flushes the oldest. None: no bound but ``max_held``.
    :param key_concurrency: batch calls of one key that may run at once.
    :param cost: an item's cost (a number >= 0).
    :param max_cost: a batch's cost budget.
    :param min_size: a timer does not flush a smaller buffer before
        ``max_wait`` seconds...
    :param max_wait: ...after its first message.
    :param where: items for which it is false are finished without running.
    :param max_bytes: a batch's messages' wire bytes at most (a message
        bigger than it alone runs alone).
    """

    batch_size: int
    batch_timeout: float | None = None
    isolate: bool = False
    concurrency: int = DEFAULT_BATCH_CONCURRENCY
    key: ItemFunction | None = None
    max_keys: int | None = None
    key_concurrency: int | None = None
    cost: ItemFunction | None = None
    max_cost: float | None = None
    min_size: int | None = None
    max_wait: float | None = None
    where: ItemFunction | None = None
    max_bytes: int | None = None

    @property
    def max_held(self) -> int:
        """Messages of the task a worker process holds at most.

        Enough for ``concurrency`` running batches and one filling buffer,
        or, with ``batch_key`` and ``batch_max_keys``, one filling buffer
        per key allowed.
        """
        return (self.concurrency + self._filling) * self.batch_size

    @property
    def max_held_bytes(self) -> int:
        """Wire bytes of the task's messages a worker process holds at most.

        With ``batch_max_bytes``, enough for as many full batches as
        ``max_held`` allows; otherwise ``DEFAULT_MAX_HELD_BYTES``. A single
        message over it is still taken when nothing else of the task is held.
        """
        if self.max_bytes is None:
            return DEFAULT_MAX_HELD_BYTES
        return (self.concurrency + self._filling) * self.max_bytes

    @property
    def _filling(self) -> int:
        return self.max_keys if self.key is not None and self.max_keys else 1


def parse_settings(task_name: str, labels: Mapping[str, Any]) -> BatchSettings:
    """Validate the batch settings of a task declared with ``batch=True``.

    :param task_name: used in error messages.
    :param labels: the labels given to ``@broker.task``.
    :raises BatchConfigError: when a setting is unknown or out of range.
    :return: the validated settings.
    """
    where = f"batched task {task_name!r}"
    unknown = sorted(
        name
        for name in labels
        if name.startswith("batch_") and name not in SETTING_LABELS
    )
    for name in MESSAGE_LABELS.intersection(unknown):
        raise BatchConfigError(
            f"{where}: {name} is a label of one message, given when it is sent "
            f"(`task.kicker().with_labels({name}=deadline(seconds))`), not of "
            "the task.",
        )
    if unknown:
        raise BatchConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; the batch_* "
            f"settings are {', '.join(sorted(SETTING_LABELS))}.",
        )
    raw_size = labels.get(BATCH_SIZE_LABEL)
    raw_timeout = labels.get(BATCH_TIMEOUT_LABEL)
    if raw_size is None and raw_timeout is None:
        raise BatchConfigError(
            f"{where}: batch=True needs batch_size (messages, an int >= 1), "
            "batch_timeout (seconds > 0), or both.",
        )
    isolate = labels.get(BATCH_ISOLATE_LABEL, False)
    if not isinstance(isolate, bool):
        raise BatchConfigError(
            f"{where}: batch_isolate must be True or False, got {isolate!r}.",
        )
    size = (
        DEFAULT_BATCH_SIZE
        if raw_size is None
        else count(where, BATCH_SIZE_LABEL, raw_size, "messages")
    )
    timeout = (
        None
        if raw_timeout is None
        else seconds(where, BATCH_TIMEOUT_LABEL, raw_timeout)
    )
    return BatchSettings(
        batch_size=size,
        batch_timeout=timeout,
        isolate=isolate,
        concurrency=count(
            where,
            BATCH_CONCURRENCY_LABEL,
            labels.get(BATCH_CONCURRENCY_LABEL, DEFAULT_BATCH_CONCURRENCY),
            "batch calls",
        ),
        **_keys(where, labels),
        **_cost(where, labels),
        **_min_size(where, labels, size, timeout),
        where=_optional(where, labels, BATCH_WHERE_LABEL, item_function),
        max_bytes=_optional(where, labels, BATCH_MAX_BYTES_LABEL, wire_bytes),
    )


def _optional(
    where: str,
    labels: Mapping[str, Any],
    name: str,
    check: Callable[[str, str, Any], _V],
) -> _V | None:
    value = labels.get(name)
    return None if value is None else check(where, name, value)


def _keys(where: str, labels: Mapping[str, Any]) -> dict[str, Any]:
    key = _optional(where, labels, BATCH_KEY_LABEL, item_function)
    max_keys = labels.get(BATCH_MAX_KEYS_LABEL)
    key_concurrency = labels.get(BATCH_KEY_CONCURRENCY_LABEL)
    for name, value in (
        (BATCH_MAX_KEYS_LABEL, max_keys),
        (BATCH_KEY_CONCURRENCY_LABEL, key_concurrency),
    ):
        if value is not None:
            count(where, name, value, "keys" if value is max_keys else "batch calls")
    if key_concurrency is not None and key is None:
        raise BatchConfigError(
            f"{where}: batch_key_concurrency={key_concurrency!r} needs batch_key "
            "(a function of the item or a field name).",
        )
    return {"key": key, "max_keys": max_keys, "key_concurrency": key_concurrency}


def _cost(where: str, labels: Mapping[str, Any]) -> dict[str, Any]:
    cost = _optional(where, labels, BATCH_COST_LABEL, item_function)
    max_cost = _optional(where, labels, BATCH_MAX_COST_LABEL, budget)
    if (cost is None) != (max_cost is None):
        given, missing = (
            (BATCH_COST_LABEL, BATCH_MAX_COST_LABEL)
            if max_cost is None
            else (BATCH_MAX_COST_LABEL, BATCH_COST_LABEL)
        )
        raise BatchConfigError(
            f"{where}: {given}={labels[given]!r} needs {missing} too (batch_cost: "
            "a function of the item or a field name; batch_max_cost: a number > 0).",
        )
    return {"cost": cost, "max_cost": max_cost}


def _min_size(
    where: str, labels: Mapping[str, Any], size: int, timeout: float | None
) -> dict[str, Any]:
    min_size = _optional(
        where,
        labels,
        BATCH_MIN_SIZE_LABEL,
        lambda w, n, v: count(w, n, v, "messages"),
    )
    max_wait = _optional(where, labels, BATCH_MAX_WAIT_LABEL, seconds)
    if min_size is None:
        if max_wait is not None:
            raise BatchConfigError(
                f"{where}: batch_max_wait={labels[BATCH_MAX_WAIT_LABEL]!r} is only "
                "used with batch_min_size (messages, an int >= 1).",
            )
        return {}
    if max_wait is None:
        raise BatchConfigError(
            f"{where}: batch_min_size={min_size!r} needs batch_max_wait (seconds, "
            ">= batch_timeout): no item may wait forever.",
        )
    if min_size > size:
        raise BatchConfigError(
            f"{where}: batch_min_size={min_size!r} must be <= batch_size={size!r}.",
        )
    if timeout is None or max_wait < timeout:
        raise BatchConfigError(
            f"{where}: batch_max_wait={labels[BATCH_MAX_WAIT_LABEL]!r} needs "
            f"batch_timeout and must be >= it (batch_timeout={timeout!r} s).",
        )
    return {"min_size": min_size, "max_wait": max_wait}
