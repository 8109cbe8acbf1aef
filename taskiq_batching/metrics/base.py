"""What both exporters share: the instruments, and attaching to the batcher.

An exporter is a taskiq middleware that registers itself as an observer of
the broker's ``BatchingMiddleware`` (``core/events.py``): it is told of
each flush, each finished batch and each reclaim, never of each message.
It is a middleware, not only an observer, for what events cannot tell:
the messages held right now (the batcher's counts, read for the gauges),
and a start in each worker process (after taskiq's own metrics
middleware has set the process up). It overrides no per-message hook,
so taskiq's Receiver never calls it for a message.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from taskiq import AsyncBroker, TaskiqMiddleware

from taskiq_batching import BatchingMiddleware, BatchReport
from taskiq_batching.core.batcher import Batcher
from taskiq_batching.errors import MiddlewareMissingError
from taskiq_batching.settings import FlushReason

#: Upper bounds of the batch size histogram, in messages.
SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
)  # fmt: skip
#: Upper bounds of the fill ratio histogram: a full batch is exactly 1.
FILL_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
)  # fmt: skip
#: Upper bounds of the wait and run time histograms, in seconds.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class Instrument:
    """One metric, as both exporters create it.

    :param name: its name (Prometheus adds ``_total`` to a counter's).
    :param kind: counter, histogram or gauge.
    :param unit: its unit, UCUM as OpenTelemetry writes it.
    :param description: what it counts.
    :param labels: its label (attribute) names.
    """

    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ("task_name",)


FLUSHES = Instrument(
    "taskiq_batching_flushes",
    "counter",
    "{batch}",
    "Buffers flushed into batches, by flush reason",
    ("task_name", "reason"),
)
BATCH_SIZE = Instrument(
    "taskiq_batching_batch_size", "histogram", "{message}", "Messages per batch"
)
FILL_RATIO = Instrument(
    "taskiq_batching_batch_fill_ratio",
    "histogram",
    "1",
    "Messages per batch divided by the task's batch_size",
)
WAIT = Instrument(
    "taskiq_batching_batch_wait_seconds",
    "histogram",
    "s",
    "Seconds from a batch's first message entering its buffer to the batch's start",
)
RUN = Instrument(
    "taskiq_batching_batch_run_seconds",
    "histogram",
    "s",
    "Seconds a batch ran (isolation re-runs included), by outcome",
    ("task_name", "outcome"),
)
FAILED = Instrument(
    "taskiq_batching_failed_messages",
    "counter",
    "{message}",
    "Messages whose batch outcome is an error",
)
RERUNS = Instrument(
    "taskiq_batching_isolation_reruns",
    "counter",
    "{call}",
    "Extra calls of batch functions made to isolate failing items (calls - 1)",
)
RECLAIMED = Instrument(
    "taskiq_batching_reclaimed_messages",
    "counter",
    "{message}",
    "Deliveries of dead consumers reclaimed by this worker (any task)",
    (),
)
BUFFERED = Instrument(
    "taskiq_batching_buffered_messages",
    "gauge",
    "{message}",
    "Messages waiting in open buffers",
)
IN_FLIGHT = Instrument(
    "taskiq_batching_in_flight_messages",
    "gauge",
    "{message}",
    "Messages of flushed batches not finished yet (waiting to run, running, "
    "being finished)",
)
RUNNING = Instrument(
    "taskiq_batching_running_batches", "gauge", "{batch}", "Batch calls running"
)

#: Every instrument, in the order the docs list them.
INSTRUMENTS: tuple[Instrument, ...] = (
    FLUSHES,
    BATCH_SIZE,
    FILL_RATIO,
    WAIT,
    RUN,
    FAILED,
    RERUNS,
    RECLAIMED,
    BUFFERED,
    IN_FLIGHT,
    RUNNING,
)


class HeldCounts(NamedTuple):
    """What one process holds of one task, right now.

    :param task_name: the batched task.
    :param buffered: messages in open buffers.
    :param in_flight: messages of flushed batches not finished yet.
    :param running: batch calls running.
    """

    task_name: str
    buffered: int
    in_flight: int
    running: int


def held_of(batcher: Batcher, task_name: str) -> HeldCounts:
    """The batcher's counts of one task.

    Safe from another thread (an OpenTelemetry reader's): it only reads,
    with ``get``, since indexing the batcher's defaultdicts would insert.

    :param batcher: the batcher.
    :param task_name: a batched task.
    :return: its counts.
    """
    buffered = batcher.waiting.get(task_name, 0)
    held = batcher.held.get(task_name, 0)
    running = batcher.running.get(task_name, 0)
    return HeldCounts(task_name, buffered, max(held - buffered, 0), running)


def held_now(batcher: Batcher) -> list[HeldCounts]:
    """The batcher's counts of every batched task (see ``held_of``).

    :param batcher: the batcher.
    :return: one entry per batched task.
    """
    return [held_of(batcher, task_name) for task_name in list(batcher.specs)]


def fill(report: BatchReport) -> float:
    """A batch's size over its task's ``batch_size``."""
    return report.size / report.batch_size if report.batch_size > 0 else 1.0


def reruns(report: BatchReport) -> int:
    """Calls of the batch function beyond the first (isolation re-runs)."""
    return max(report.calls - 1, 0)


class BatchMetricsMiddleware(TaskiqMiddleware):
    """A metrics exporter: a middleware that observes the broker's batcher.

    It has the ``BatchObserver`` methods (``flushed``, ``finished``,
    ``reclaimed``), called per batch on the event loop.

    Add it to the broker's middlewares after ``BatchingMiddleware``; it
    registers itself as its observer (found again at ``startup`` if it was
    added first).
    """

    def __init__(self) -> None:
        super().__init__()
        self.batching: BatchingMiddleware | None = None

    def set_broker(self, broker: AsyncBroker) -> None:
        """Attach to a broker: called by ``with_middlewares``.

        :param broker: the broker.
        """
        super().set_broker(broker)
        self.attach(required=False)

    def attach(self, required: bool = True) -> BatchingMiddleware | None:
        """Observe the broker's ``BatchingMiddleware`` (once).

        :param required: raise when the broker has none.
        :raises MiddlewareMissingError: when required and missing.
        :return: the broker's ``BatchingMiddleware``, if it has one yet.
        """
        if self.batching is None:
            try:
                found = BatchingMiddleware.of(self.broker)
            except MiddlewareMissingError:
                if required:
                    raise
                return None
            found.observe(self)
            self.batching = found
        return self.batching

    @property
    def batcher(self) -> Batcher | None:
        """The batcher observed, once attached."""
        return None if self.batching is None else self.batching.batcher

    def held(self) -> Sequence[HeldCounts]:
        """What this process holds of each batched task (empty if unattached)."""
        batcher = self.batcher
        return [] if batcher is None else held_now(batcher)

    async def startup(self) -> None:
        """Check the broker batches: a missing ``BatchingMiddleware`` is an error.

        :raises MiddlewareMissingError: when the broker has none.
        """
        self.attach(required=True)

    # The observer's events; exporters override them.

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """A buffer of ``size`` messages was flushed into a batch."""

    def finished(self, report: BatchReport) -> None:
        """A batch finished running."""

    def reclaimed(self, count: int) -> None:
        """``count`` deliveries of a dead worker were reclaimed."""
