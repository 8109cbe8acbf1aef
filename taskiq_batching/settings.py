"""Batch settings: read from task labels and validated when a task is declared."""

import contextlib
import datetime
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskiq.acks import AcknowledgeType, parse_acknowledge_type

from taskiq_batching.errors import BatchConfigError

#: Label that marks a task as batched: ``@broker.task(batch=True, ...)``.
BATCH_LABEL = "batch"
#: Flush a buffer at this many messages.
BATCH_SIZE_LABEL = "batch_size"
#: Flush a buffer this many seconds after its first message.
BATCH_TIMEOUT_LABEL = "batch_timeout"
#: Bisect a failed batch to fail only its failing items.
BATCH_ISOLATE_LABEL = "batch_isolate"
#: Batch calls of the task that may run at once in one worker process.
BATCH_CONCURRENCY_LABEL = "batch_concurrency"

#: The labels this plugin owns. On a task without ``batch=True`` they are
#: refused (``batch=False`` switches them off explicitly); any other label
#: name is free for plain tasks.
SETTING_LABELS = frozenset(
    {
        BATCH_SIZE_LABEL,
        BATCH_TIMEOUT_LABEL,
        BATCH_ISOLATE_LABEL,
        BATCH_CONCURRENCY_LABEL,
    },
)

#: ``batch_size`` of a task that only sets ``batch_timeout``.
DEFAULT_BATCH_SIZE = 100
#: ``batch_concurrency`` of a task that does not set it.
DEFAULT_BATCH_CONCURRENCY = 1


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
    """

    batch_size: int
    batch_timeout: float | None = None
    isolate: bool = False
    concurrency: int = DEFAULT_BATCH_CONCURRENCY

    @property
    def max_held(self) -> int:
        """Messages of the task a worker process holds at most.

        Enough for ``concurrency`` running batches and one filling.
        """
        return (self.concurrency + 1) * self.batch_size


def wants_batching(task_name: str, labels: Mapping[str, Any]) -> bool:
    """Whether a task's labels make it a batched task.

    :param task_name: used in error messages.
    :param labels: the labels given to ``@broker.task``.
    :raises BatchConfigError: when ``batch`` is not a bool, or batch settings
        are given without ``batch=True`` or ``batch=False``.
    :return: True for ``batch=True``.
    """
    if BATCH_LABEL not in labels:
        given = sorted(SETTING_LABELS.intersection(labels))
        if given:
            raise BatchConfigError(
                f"task {task_name!r}: {', '.join(given)} need(s) batch=True "
                "(or batch=False to declare it unbatched).",
            )
        return False
    value = labels[BATCH_LABEL]
    if not isinstance(value, bool):
        raise BatchConfigError(
            f"task {task_name!r}: batch must be True or False, got {value!r}.",
        )
    return value


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
    return BatchSettings(
        batch_size=(
            DEFAULT_BATCH_SIZE
            if raw_size is None
            else _count(where, BATCH_SIZE_LABEL, raw_size, "messages")
        ),
        batch_timeout=(
            None
            if raw_timeout is None
            else seconds(where, BATCH_TIMEOUT_LABEL, raw_timeout)
        ),
        isolate=isolate,
        concurrency=_count(
            where,
            BATCH_CONCURRENCY_LABEL,
            labels.get(BATCH_CONCURRENCY_LABEL, DEFAULT_BATCH_CONCURRENCY),
            "batch calls",
        ),
    )


def task_timeout(task_name: str, labels: Mapping[str, Any]) -> float | None:
    """The ``timeout`` label of a batched task, in seconds: it limits each batch call.

    :param task_name: used in error messages.
    :param labels: the task's labels.
    :raises BatchConfigError: when it is not a number of seconds > 0.
    :return: the timeout, or None without one.
    """
    value = labels.get("timeout")
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return seconds(f"batched task {task_name!r}", "timeout", value)


def task_ack_type(task_name: str, labels: Mapping[str, Any]) -> AcknowledgeType | None:
    """The ``ack_type`` label of a batched task, checked as taskiq would.

    :param task_name: used in error messages.
    :param labels: the task's labels.
    :raises BatchConfigError: when taskiq would refuse it.
    :return: the ack type, or None to use the worker's ``--ack-type``.
    """
    value = labels.get("ack_type")
    if value is None:
        return None
    try:
        return parse_acknowledge_type(value)
    except ValueError:
        accepted = ", ".join(repr(kind.value) for kind in AcknowledgeType)
        raise BatchConfigError(
            f"batched task {task_name!r}: ack_type must be one of {accepted} "
            f"(or an AcknowledgeType), got {value!r}.",
        ) from None


def seconds(where: str, name: str, value: Any) -> float:
    """A duration setting in seconds: a number, or a ``datetime.timedelta``.

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :raises BatchConfigError: unless it is a finite duration > 0.
    :return: the duration in seconds.
    """
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BatchConfigError(
            f"{where}: {name} must be a finite number of seconds > 0 "
            f"(or a timedelta), got {value!r}.",
        )
    return float(value)


def _count(where: str, name: str, value: Any, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchConfigError(
            f"{where}: {name} must be an int >= 1 ({unit}), got {value!r}.",
        )
    return value
