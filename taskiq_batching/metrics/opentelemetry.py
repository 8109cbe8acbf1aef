"""OpenTelemetry metrics of batches, through OpenTelemetry's metrics API.

The same instruments as the Prometheus exporter, with the same names and
attributes, made with a meter of the given (or the global) meter
provider; without a configured provider, the API's no-op meter records
nothing. Each process exports its own figures (no shared files here).
"""

from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

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
    Instrument,
    fill,
    reruns,
)
from taskiq_batching.settings import FlushReason

if TYPE_CHECKING:
    from opentelemetry.metrics import (
        CallbackOptions,
        Counter,
        Histogram,
        Meter,
        MeterProvider,
    )


def _version() -> str:
    try:
        return version("taskiq-batching")
    except PackageNotFoundError:  # run from a source tree, not installed
        return "0"


class OpenTelemetryBatchMetrics(BatchMetricsMiddleware):
    """OpenTelemetry metrics of every batch, per task (attribute ``task_name``).

    >>> broker = RedisStreamBroker(url).with_middlewares(
    >>>     OpenTelemetryMiddleware(meter_provider=provider),
    >>>     BatchingMiddleware(),
    >>>     OpenTelemetryBatchMetrics(meter_provider=provider),
    >>> )

    Counters and histograms are recorded per batch; the gauges of
    messages held are observed when the provider's reader collects.

    :param meter_provider: the provider to get a meter from (the global
        one by default, as taskiq's ``OpenTelemetryMiddleware`` does).
    :param meter: a meter to use instead.
    :param size_buckets: advised bucket bounds of the batch size histogram.
    :param wait_buckets: advised bucket bounds of the wait histogram, seconds.
    :param run_buckets: advised bucket bounds of the run time histogram, seconds.
    :raises MissingDependencyError: when opentelemetry-api is not installed.
    """

    def __init__(
        self,
        meter_provider: "MeterProvider | None" = None,
        meter: "Meter | None" = None,
        size_buckets: Iterable[float] = SIZE_BUCKETS,
        wait_buckets: Iterable[float] = SECONDS_BUCKETS,
        run_buckets: Iterable[float] = SECONDS_BUCKETS,
    ) -> None:
        # Imported here, so that importing this module never fails: the
        # error says what to install.
        try:
            from opentelemetry.metrics import Observation, get_meter
        except ImportError:
            raise MissingDependencyError(
                "OpenTelemetryBatchMetrics", "opentelemetry", "opentelemetry"
            ) from None
        super().__init__()
        if meter is None:
            meter = get_meter("taskiq_batching", _version(), meter_provider)
        self.meter = meter

        def counter(spec: Instrument) -> "Counter":
            return meter.create_counter(spec.name, spec.unit, spec.description)

        def histogram(spec: Instrument, buckets: Iterable[float]) -> "Histogram":
            return meter.create_histogram(
                spec.name,
                spec.unit,
                spec.description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        def gauge(spec: Instrument, read: Callable[[HeldCounts], int]) -> None:
            def observe(options: "CallbackOptions") -> Iterable[Observation]:
                return [
                    Observation(read(held), {"task_name": held.task_name})
                    for held in self.held()
                ]

            meter.create_observable_gauge(
                spec.name, [observe], spec.unit, spec.description
            )

        self.flushes = counter(FLUSHES)
        self.size = histogram(BATCH_SIZE, size_buckets)
        self.fill = histogram(FILL_RATIO, FILL_BUCKETS)
        self.wait = histogram(WAIT, wait_buckets)
        self.run = histogram(RUN, run_buckets)
        self.failed = counter(FAILED)
        self.reruns = counter(RERUNS)
        self.reclaimed_count = counter(RECLAIMED)
        gauge(BUFFERED, lambda held: held.buffered)
        gauge(IN_FLIGHT, lambda held: held.in_flight)
        gauge(RUNNING, lambda held: held.running)

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """Count the flush, by reason."""
        self.flushes.add(1, {"task_name": task_name, "reason": reason.value})

    def finished(self, report: BatchReport) -> None:
        """Record a batch that ran (or was cut off at a stop)."""
        task = {"task_name": report.task_name}
        self.size.record(report.size, task)
        self.fill.record(fill(report), task)
        self.wait.record(report.waited, task)
        self.run.record(
            report.seconds, {"task_name": report.task_name, "outcome": report.outcome}
        )
        if report.failed:
            self.failed.add(report.failed, task)
        extra = reruns(report)
        if extra:
            self.reruns.add(extra, task)

    def reclaimed(self, count: int) -> None:
        """Count deliveries reclaimed from dead consumers."""
        self.reclaimed_count.add(count)
