"""Per-task statistics of one worker process, without a metrics library.

``BatchingMiddleware.of(broker).statistics()`` reads them. Counters grow
from the process's start; waits are kept for the last ``WAITS_KEPT``
batches of each task.
"""

import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq_batching.core.events import BatchReport
from taskiq_batching.settings import FlushReason

if TYPE_CHECKING:
    from taskiq_batching.core.batcher import Batcher

#: Batches whose wait is kept per task, for the percentiles.
WAITS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class TaskStatistics:
    """What one batched task did in this worker process.

    :param task_name: the batched task.
    :param batches: batches run (cut-off ones included).
    :param items: messages in those batches.
    :param average_size: ``items / batches`` (0.0 before the first batch).
    :param fill_ratio: average size over ``batch_size``, 0.0 to 1.0.
    :param flushes: flushed buffers by reason (``FlushReason`` values).
    :param failed: messages whose outcome was an error.
    :param isolation_runs: extra calls of the batch function (bisection).
    :param waiting: messages waiting in open buffers now.
    :param running: batches running now.
    :param wait_p50: median seconds a batch's first message waited for
        the batch to start, over the last ``WAITS_KEPT`` batches.
    :param wait_p99: the 99th percentile of the same.
    """

    task_name: str
    batches: int
    items: int
    average_size: float
    fill_ratio: float
    flushes: dict[str, int]
    failed: int
    isolation_runs: int
    waiting: int
    running: int
    wait_p50: float
    wait_p99: float


@dataclass(slots=True)
class _Task:
    batches: int = 0
    items: int = 0
    capacity: int = 0
    failed: int = 0
    isolation_runs: int = 0
    flushes: Counter[str] = field(default_factory=Counter)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=WAITS_KEPT))


class Statistics:
    """An observer of the batcher that keeps ``TaskStatistics``.

    :param batcher: read for what waits and runs now.
    """

    def __init__(self, batcher: "Batcher") -> None:
        self.batcher = batcher
        self._tasks: defaultdict[str, _Task] = defaultdict(_Task)

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """Count a flush by its reason."""
        self._tasks[task_name].flushes[reason.value] += 1

    def finished(self, report: BatchReport) -> None:
        """Count a finished batch."""
        task = self._tasks[report.task_name]
        task.batches += 1
        task.items += report.size
        task.capacity += report.batch_size
        task.failed += report.failed
        task.isolation_runs += max(report.calls - 1, 0)
        task.waits.append(report.waited)

    def reclaimed(self, count: int) -> None:
        """Reclaims are not per task: metrics exporters count them."""

    def of(self, task_name: str) -> TaskStatistics:
        """One task's statistics now.

        :param task_name: a batched task.
        :return: its statistics.
        """
        task = self._tasks[task_name]
        waits = sorted(task.waits)
        return TaskStatistics(
            task_name=task_name,
            batches=task.batches,
            items=task.items,
            average_size=task.items / task.batches if task.batches else 0.0,
            fill_ratio=task.items / task.capacity if task.capacity else 0.0,
            flushes=dict(task.flushes),
            failed=task.failed,
            isolation_runs=task.isolation_runs,
            waiting=self.batcher.buffered(task_name),
            running=self.batcher.running[task_name],
            wait_p50=_percentile(waits, 0.50),
            wait_p99=_percentile(waits, 0.99),
        )


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (0.0 when there are none)."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]
