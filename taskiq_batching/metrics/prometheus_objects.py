"""The Prometheus metric objects of batches: one set per registry, and per task.

``prometheus_client`` decides once, when it is imported, whether values go
to the multiprocess files: it is imported only when ``create_metrics``
runs (``PrometheusBatchMetrics`` says when), never with this module.
"""

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from taskiq_batching.metrics.base import (
    BATCH_SIZE,
    BUFFERED,
    FAILED,
    FILL_RATIO,
    FLUSHES,
    IN_FLIGHT,
    RECLAIMED,
    RERUNS,
    RUN,
    RUNNING,
    WAIT,
    HeldCounts,
)
from taskiq_batching.metrics.multiprocess import warn_if_in_memory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: A gauge of a process counts while it lives; the endpoint sums them.
_GAUGE_MODE: Literal["livesum"] = "livesum"


@dataclass(frozen=True)
class Metrics:
    """The batch metrics of one registry (``metrics/base.py`` names them)."""

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


class TaskMetrics:
    """One task's labelled metrics, looked up once rather than per batch."""

    def __init__(self, metrics: Metrics, task_name: str) -> None:
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
_by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, Metrics]" = (
    weakref.WeakKeyDictionary()
)


def create_metrics(
    registry: "CollectorRegistry | None", buckets: Mapping[str, Sequence[float]]
) -> Metrics:
    """The metrics of a registry, created (and prometheus_client imported) once.

    :param registry: where they register (None: prometheus_client's ``REGISTRY``).
    :param buckets: each histogram's upper bounds, by the metric's name.
    :return: the registry's metrics, those made before if it has them.
    """
    # Imported here: see the module's docstring.
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    into = REGISTRY if registry is None else registry
    existing = _by_registry.get(into)
    if existing is not None:
        return existing
    warn_if_in_memory()

    def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
        return Counter(name, doc, labels, registry=into)

    def histogram(name: str, doc: str, labels: Sequence[str]) -> Histogram:
        return Histogram(name, doc, labels, registry=into, buckets=buckets[name])

    def gauge(name: str, doc: str, labels: Sequence[str]) -> Gauge:
        return Gauge(name, doc, labels, registry=into, multiprocess_mode=_GAUGE_MODE)

    created = Metrics(
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
    _by_registry[into] = created
    return created
