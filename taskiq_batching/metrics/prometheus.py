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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from taskiq_batching.core.events import BatchReport
from taskiq_batching.errors import MissingDependencyError
from taskiq_batching.metrics.base import (
    BATCH_SIZE,
    BUFFERED,
    FAILED,
    FILL_BUCKETS,
    FILL_RATIO,
    FLUSHES,
    IN_FLIGHT,
    RECLAIMED,
    RERUNS,
    RUN,
    RUNNING,
    SECONDS_BUCKETS,
    SIZE_BUCKETS,
    WAIT,
    BatchMetricsMiddleware,
    HeldCounts,
    fill,
    held_of,
    reruns,
)
from taskiq_batching.metrics.multiprocess import (
    forget_dead_processes,
    warn_if_in_memory,
)
from taskiq_batching.settings import FlushReason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger("taskiq_batching")

#: A gauge of a process counts while it lives; the endpoint sums them.
_GAUGE_MODE: Literal["livesum"] = "livesum"


@dataclass(frozen=True)
class _Metrics:
    flushes: "Counter"
    size: "Histogram"
    fill: "Histogram"
    wait: "Histogram"
    run: "Histogram"
    failed: "Counter"
    reruns: "Counter"
    reclaimed: "Counter"
    buffered: "Gauge"
    in_flight: "Gauge"
    running: "Gauge"


class _Task:
    """One task's labelled metrics, looked up once rather than per batch."""

    def __init__(self, metrics: _Metrics, task_name: str) -> None:
        self.metrics = metrics
        self.task_name = task_name
        self.size = metrics.size.labels(task_name)
        self.fill = metrics.fill.labels(task_name)
        self.wait = metrics.wait.labels(task_name)
        self.failed = metrics.failed.labels(task_name)
        self.reruns = metrics.reruns.labels(task_name)
        self.buffered = metrics.buffered.labels(task_name)
        self.in_flight = metrics.in_flight.labels(task_name)
        self.running = metrics.running.labels(task_name)
        self.flushes: dict[str, Counter] = {}
        self.runs: dict[str, Histogram] = {}
        #: What the gauges were last set to, by this process.
        self.last: HeldCounts | None = None

    def flush(self, reason: str) -> "Counter":
        """The flush counter of one reason."""
        found = self.flushes.get(reason)
        if found is None:
            found = self.flushes[reason] = self.metrics.flushes.labels(
                self.task_name, reason
            )
        return found

    def run(self, outcome: str) -> "Histogram":
        """The run time histogram of one outcome."""
        found = self.runs.get(outcome)
        if found is None:
            found = self.runs[outcome] = self.metrics.run.labels(
                self.task_name, outcome
            )
        return found

    def set(self, held: HeldCounts) -> None:
        """Set the gauges that changed.

        In multiprocess mode every write goes to a file (and asks the
        kernel for the pid): the ones that would change nothing are skipped.
        """
        last, self.last = self.last, held
        if last is None or held.buffered != last.buffered:
            self.buffered.set(held.buffered)
        if last is None or held.in_flight != last.in_flight:
            self.in_flight.set(held.in_flight)
        if last is None or held.running != last.running:
            self.running.set(held.running)


#: The metrics of each registry: a name registers once per registry, and
#: several brokers (or exporters) of one process share them.
_by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, _Metrics]" = (
    weakref.WeakKeyDictionary()
)


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
        self._metrics: _Metrics | None = None
        self._tasks: dict[str, _Task] = {}
        self._refresher: asyncio.Task[None] | None = None

    def metrics(self) -> _Metrics:
        """The metric objects, created (and prometheus_client imported) on first use."""
        if self._metrics is None:
            self._metrics = self._create()
        return self._metrics

    def _create(self) -> _Metrics:
        # Imported here: see the module's docstring.
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if self.registry is None else self.registry
        existing = _by_registry.get(registry)
        if existing is not None:
            return existing
        warn_if_in_memory()

        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: Sequence[str]) -> Histogram:
            buckets = self.buckets[name]
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        def gauge(name: str, doc: str, labels: Sequence[str]) -> Gauge:
            return Gauge(
                name, doc, labels, registry=registry, multiprocess_mode=_GAUGE_MODE
            )

        created = _Metrics(
            flushes=counter(FLUSHES.name, FLUSHES.description, FLUSHES.labels),
            size=histogram(BATCH_SIZE.name, BATCH_SIZE.description, BATCH_SIZE.labels),
            fill=histogram(FILL_RATIO.name, FILL_RATIO.description, FILL_RATIO.labels),
            wait=histogram(WAIT.name, WAIT.description, WAIT.labels),
            run=histogram(RUN.name, RUN.description, RUN.labels),
            failed=counter(FAILED.name, FAILED.description, FAILED.labels),
            reruns=counter(RERUNS.name, RERUNS.description, RERUNS.labels),
            reclaimed=counter(RECLAIMED.name, RECLAIMED.description, ()),
            buffered=gauge(BUFFERED.name, BUFFERED.description, BUFFERED.labels),
            in_flight=gauge(IN_FLIGHT.name, IN_FLIGHT.description, IN_FLIGHT.labels),
            running=gauge(RUNNING.name, RUNNING.description, RUNNING.labels),
        )
        _by_registry[registry] = created
        return created

    def _task(self, task_name: str) -> _Task:
        found = self._tasks.get(task_name)
        if found is None:
            found = self._tasks[task_name] = _Task(self.metrics(), task_name)
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
