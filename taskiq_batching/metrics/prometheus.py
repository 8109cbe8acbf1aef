"""Prometheus metrics of batches, served by taskiq's ``PrometheusMiddleware``.

taskiq's middleware sets ``PROMETHEUS_MULTIPROC_DIR`` when it is created
and serves, from one worker process, what every process of ``taskiq
worker --workers N`` wrote there. ``prometheus_client`` decides once,
when it is imported, whether values go to those files: so nothing here
imports it, or creates a metric, before a worker process starts (or
before the first event, where there is no worker: ``InMemoryBroker``).
"""

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskiq_batching.core.events import BatchReport
from taskiq_batching.errors import MissingDependencyError
from taskiq_batching.metrics.base import (
    BATCH_SIZE,
    FILL_BUCKETS,
    FILL_RATIO,
    RUN,
    SECONDS_BUCKETS,
    SIZE_BUCKETS,
    WAIT,
    BatchMetricsMiddleware,
    fill,
    held_of,
    reruns,
)
from taskiq_batching.metrics.multiprocess import forget_dead_processes
from taskiq_batching.metrics.prometheus_objects import (
    Metrics,
    TaskMetrics,
    create_metrics,
)
from taskiq_batching.settings import FlushReason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("taskiq_batching")


class PrometheusBatchMetrics(BatchMetricsMiddleware):
    """Prometheus metrics of every batch, per task (label ``task_name``).

    >>> broker = RedisStreamBroker(url).with_middlewares(
    >>>     PrometheusMiddleware(server_port=9000),
    >>>     BatchingMiddleware(),
    >>>     PrometheusBatchMetrics(),
    >>> )

    Counters and histograms are updated per batch (at its flush and when
    it has run); the gauges of messages held at each flush of the task
    and, in a worker process, every ``interval`` seconds. Nothing is done
    per message.

    :param registry: where the metrics register (prometheus_client's
        ``REGISTRY`` by default). Under ``taskiq worker`` with taskiq's
        ``PrometheusMiddleware`` keep the default: its endpoint reads every
        process's files, whatever the registry.
    :param interval: seconds between two refreshes of the gauges in a
        worker process.
    :param size_buckets: upper bounds of the batch size histogram, in
        messages (include your ``batch_size``).
    :param wait_buckets: upper bounds of the wait histogram, in seconds
        (include values near your ``batch_timeout``).
    :param run_buckets: upper bounds of the run time histogram, in seconds.
    :raises MissingDependencyError: when prometheus_client is not installed.
    """

    def __init__(
        self,
        registry: "CollectorRegistry | None" = None,
        interval: float = 1.0,
        size_buckets: Sequence[float] = SIZE_BUCKETS,
        wait_buckets: Sequence[float] = SECONDS_BUCKETS,
        run_buckets: Sequence[float] = SECONDS_BUCKETS,
    ) -> None:
        # Found, not imported (see the module's docstring).
        if importlib.util.find_spec("prometheus_client") is None:
            raise MissingDependencyError(
                "PrometheusBatchMetrics", "prometheus_client", "metrics"
            )
        super().__init__()
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.registry = registry
        self.interval = interval
        self.buckets = {
            BATCH_SIZE.name: tuple(size_buckets),
            FILL_RATIO.name: FILL_BUCKETS,
            WAIT.name: tuple(wait_buckets),
            RUN.name: tuple(run_buckets),
        }
        self._metrics: Metrics | None = None
        self._tasks: dict[str, TaskMetrics] = {}
        self._refresher: asyncio.Task[None] | None = None

    def metrics(self) -> Metrics:
        """The metric objects, created (and prometheus_client imported) on first use."""
        if self._metrics is None:
            self._metrics = create_metrics(self.registry, self.buckets)
        return self._metrics

    def _task(self, task_name: str) -> TaskMetrics:
        found = self._tasks.get(task_name)
        if found is None:
            found = self._tasks[task_name] = TaskMetrics(self.metrics(), task_name)
        return found

    # --- the observer's events (per batch) -----------------------------------

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """Count the flush; the task's messages moved from buffered to in flight."""
        task = self._task(task_name)
        task.flush(reason.value).inc()
        batcher = self.batcher
        if batcher is not None:
            task.set(held_of(batcher, task_name))

    def finished(self, report: BatchReport) -> None:
        """Record a batch that ran (or was cut off at a stop)."""
        task = self._task(report.task_name)
        task.size.observe(report.size)
        task.fill.observe(fill(report))
        task.wait.observe(report.waited)
        task.run(report.outcome).observe(report.seconds)
        if report.failed:
            task.failed.inc(report.failed)
        extra = reruns(report)
        if extra:
            task.reruns.inc(extra)

    def reclaimed(self, count: int) -> None:
        """Count deliveries reclaimed from dead consumers."""
        self.metrics().reclaimed.inc(count)

    # --- gauges ----------------------------------------------------------------

    def refresh(self) -> None:
        """Set the gauges of every batched task from the batcher's counts now."""
        for held in self.held():
            self._task(held.task_name).set(held)

    async def _refresh_every(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a metrics failure must not stop the worker
                logger.exception("taskiq_batching: refreshing the gauges failed")
            await asyncio.sleep(self.interval)

    # --- the worker process ----------------------------------------------------

    async def startup(self) -> None:
        """In a worker process: create the metrics, refresh the gauges on a timer."""
        await super().startup()
        if not self.broker.is_worker_process:
            return
        forget_dead_processes()
        self.metrics()
        if self._refresher is None or self._refresher.done():
            loop = asyncio.get_running_loop()
            self._refresher = loop.create_task(self._refresh_every())

    async def shutdown(self) -> None:
        """Stop refreshing; set the gauges a last time (0 once drained)."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        if self._metrics is not None:
            self.refresh()
