"""Batch settings: parsed from task labels and validated at registration."""

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskiq_batching.errors import BatchConfigError

#: Label that marks a task as batched: ``@broker.task(batch=True, ...)``.
BATCH_LABEL = "batch"
#: Label with the flush size, in messages.
BATCH_SIZE_LABEL = "batch_size"
#: Label with the flush timeout, in seconds since a buffer's first item.
BATCH_TIMEOUT_LABEL = "batch_timeout"

#: Label that turns on isolation of failing items by bisection.
BATCH_ISOLATE_LABEL = "batch_isolate"

#: Every ``batch*`` label this version understands.
KNOWN_LABELS = frozenset(
    {BATCH_LABEL, BATCH_SIZE_LABEL, BATCH_TIMEOUT_LABEL, BATCH_ISOLATE_LABEL},
)

#: ``batch_size`` used when a task only sets ``batch_timeout``.
DEFAULT_BATCH_SIZE = 100


class FlushReason(str, enum.Enum):
    """Why a buffer was turned into a batch."""

    #: The buffer reached ``batch_size``.
    SIZE = "size"
    #: ``batch_timeout`` seconds passed since the buffer's first item.
    TIMEOUT = "timeout"
    #: The worker (or the broker) is shutting down.
    SHUTDOWN = "shutdown"
    #: The worker hit its in-flight limit for the task and freed room.
    PRESSURE = "pressure"
    #: ``InMemoryBroker(await_inplace=True)``: the sender waits for the result.
    INPLACE = "inplace"
    #: Flushed on request (``BatchingMiddleware.flush``).
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Validated batch settings of one task.

    :param batch_size: flush when a buffer holds this many messages.
    :param batch_timeout: flush this many seconds after a buffer's first
        message arrived, or never when ``None`` (size-only batching).
    :param isolate: when a batch raises, re-run halves of it to find the
        failing items and fail only those.
    """

    batch_size: int
    batch_timeout: float | None
    isolate: bool = False

    @property
    def max_in_flight(self) -> int:
        """Messages of one task a worker process holds at most.

        One batch may run while the next one fills.
        """
        return 2 * self.batch_size


def is_batched(labels: Mapping[str, Any]) -> bool:
    """Whether the labels ask for batching (or mention any batch setting).

    :param labels: the labels given to ``@broker.task``.
    :return: True when any ``batch`` or ``batch_*`` label is present.
    """
    return any(name == BATCH_LABEL or name.startswith("batch_") for name in labels)


def parse_batch_labels(task_name: str, labels: Mapping[str, Any]) -> BatchConfig:
    """Validate the batch labels of a task.

    :param task_name: used in error messages.
    :param labels: the labels given to ``@broker.task``.
    :raises BatchConfigError: when a setting is missing, unknown or out of range.
    :return: the validated settings.
    """
    where = f"batched task {task_name!r}"
    unknown = sorted(
        name
        for name in labels
        if name.startswith("batch_") and name not in KNOWN_LABELS
    )
    if unknown:
        raise BatchConfigError(
            f"{where}: unknown label(s) {', '.join(unknown)}; "
            f"accepted batch labels are {', '.join(sorted(KNOWN_LABELS))}.",
        )
    if labels.get(BATCH_LABEL) is not True:
        raise BatchConfigError(
            f"{where}: batch settings need batch=True "
            f"(got batch={labels.get(BATCH_LABEL)!r}).",
        )
    raw_size = labels.get(BATCH_SIZE_LABEL)
    raw_timeout = labels.get(BATCH_TIMEOUT_LABEL)
    if raw_size is None and raw_timeout is None:
        raise BatchConfigError(
            f"{where}: batch=True needs batch_size (messages, an int >= 1), "
            "batch_timeout (seconds, a number > 0), or both.",
        )
    isolate = labels.get(BATCH_ISOLATE_LABEL, False)
    if not isinstance(isolate, bool):
        raise BatchConfigError(
            f"{where}: batch_isolate must be True or False, got {isolate!r}.",
        )
    return BatchConfig(
        batch_size=_parse_size(where, raw_size),
        batch_timeout=_parse_timeout(where, raw_timeout),
        isolate=isolate,
    )


def _parse_size(where: str, value: Any) -> int:
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchConfigError(
            f"{where}: batch_size must be an int >= 1 (messages), got {value!r}.",
        )
    return value


def _parse_timeout(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BatchConfigError(
            f"{where}: batch_timeout must be a finite number of seconds > 0, "
            f"got {value!r}.",
        )
    return float(value)
