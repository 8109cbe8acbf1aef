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
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from taskiq_batching.core.events import BatchReport
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
    Held,
    fill,
    held_of,
    reruns,
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
    it has run); the gauges of messages held at those events and, in a
    worker process, every ``interval`` seconds. Nothing is done per message.

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
    """

    def __init__(
        self,
        registry: "CollectorRegistry | None" = None,
        interval: float = 1.0,
        size_buckets: Sequence[float] = SIZE_BUCKETS,
        wait_buckets: Sequence[float] = SECONDS_BUCKETS,
        run_buckets: Sequence[float] = SECONDS_BUCKETS,
    ) -> None:
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
        _warn_if_single_process()

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

    # --- the observer's events (per batch) -----------------------------------

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """Count the flush; the task's messages moved from buffered to in flight."""
        metrics = self.metrics()
        metrics.flushes.labels(task_name, reason.value).inc()
        self._set_held(metrics, task_name)

    def finished(self, report: BatchReport) -> None:
        """Record a batch that ran (or was cut off at a stop)."""
        metrics = self.metrics()
        task_name = report.task_name
        metrics.size.labels(task_name).observe(report.size)
        metrics.fill.labels(task_name).observe(fill(report))
        metrics.wait.labels(task_name).observe(report.waited)
        metrics.run.labels(task_name, report.outcome).observe(report.seconds)
        if report.failed:
            metrics.failed.labels(task_name).inc(report.failed)
        extra = reruns(report)
        if extra:
            metrics.reruns.labels(task_name).inc(extra)
        self._set_held(metrics, task_name)

    def reclaimed(self, count: int) -> None:
        """Count deliveries reclaimed from dead consumers."""
        self.metrics().reclaimed.inc(count)

    # --- gauges ----------------------------------------------------------------

    def refresh(self) -> None:
        """Set the gauges of every batched task from the batcher's counts now."""
        metrics = self.metrics()
        for held in self.held():
            _set(metrics, held)

    def _set_held(self, metrics: _Metrics, task_name: str) -> None:
        batcher = self.batcher
        if batcher is not None:
            _set(metrics, held_of(batcher, task_name))

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
        _forget_dead_processes()
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


def _set(metrics: _Metrics, held: Held) -> None:
    metrics.buffered.labels(held.task_name).set(held.buffered)
    metrics.in_flight.labels(held.task_name).set(held.in_flight)
    metrics.running.labels(held.task_name).set(held.running)


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _warn_if_single_process() -> None:
    """Say so when the multiprocess directory is set but values stay in memory."""
    path = _multiprocess_dir()
    if path is None:
        return
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        logger.warning(
            "taskiq_batching: prometheus_client was imported before "
            "PROMETHEUS_MULTIPROC_DIR was set (%s): this process's batch "
            "metrics stay in memory, and the multiprocess endpoint does not "
            "show them. Create taskiq's PrometheusMiddleware before anything "
            "imports prometheus_client.",
            path,
        )


def _forget_dead_processes() -> None:
    """Drop the live gauges of worker processes that died without cleaning up.

    ``livesum`` gauges are summed over every process file in the directory;
    taskiq restarts a dead worker under a new pid but never removes the
    old files (prometheus_client's ``mark_process_dead``), so a crashed
    process's last count would be added forever.
    """
    path = _multiprocess_dir()
    if path is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    for file in Path(path).glob("gauge_live*_*.db"):
        pid_text = file.stem.rpartition("_")[2]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        # Another worker starting at the same time may remove it first.
        with contextlib.suppress(OSError):
            mark_process_dead(int(pid_text), path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True
