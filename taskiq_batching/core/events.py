"""What the batcher tells observers: flushes, finished batches, reclaims.

Statistics (``BatchingMiddleware.statistics``) and metrics exporters are
observers. They are called per batch, never per message, on the event
loop, and must not block or raise (a failing observer is logged and the
batch goes on).
"""

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq_batching.core.buffer import Buffer
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

logger = logging.getLogger("taskiq_batching")


@dataclass(frozen=True, slots=True)
class BatchReport:
    """One finished batch, as observers see it.

    :param task_name: the batched task.
    :param size: messages in the batch.
    :param batch_size: the task's ``batch_size`` (size / batch_size = fill).
    :param reason: why its buffer was flushed.
    :param waited: seconds from its first message's arrival to its start.
    :param seconds: seconds the batch ran (isolation re-runs included).
    :param failed: messages whose outcome is an error.
    :param calls: calls of the batch function (1, plus isolation re-runs).
    :param cut: it was cut off at a stop (cancelled, messages given back).
    """

    task_name: str
    size: int
    batch_size: int
    reason: FlushReason
    waited: float
    seconds: float
    failed: int
    calls: int
    cut: bool = False

    @property
    def outcome(self) -> str:
        """``success``, ``partial`` (some messages failed), ``error`` or ``cut``."""
        if self.cut:
            return "cut"
        if self.failed == 0:
            return "success"
        return "error" if self.failed == self.size else "partial"


class BatchObserver(Protocol):
    """Receives the batcher's events (all methods are optional to act on)."""

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """A buffer of ``size`` messages was flushed into a batch."""

    def finished(self, report: BatchReport) -> None:
        """A batch finished running (its messages are being finished)."""

    def reclaimed(self, count: int) -> None:
        """The transport reclaimed ``count`` deliveries of a dead worker."""


class Observers:
    """The observers of one batcher; each event goes to each, errors logged."""

    def __init__(self) -> None:
        self.observers: list[BatchObserver] = []

    def __bool__(self) -> bool:
        return bool(self.observers)

    def add(self, observer: BatchObserver) -> None:
        """Send events to one more observer (once, however often added).

        :param observer: the observer.
        """
        if observer not in self.observers:
            self.observers.append(observer)

    def flushed(self, task_name: str, reason: FlushReason, size: int) -> None:
        """Tell every observer of a flush (see ``BatchObserver.flushed``)."""
        self._each("flushed", task_name, reason, size)

    def finished(self, report: BatchReport) -> None:
        """Tell every observer of a finished batch."""
        self._each("finished", report)

    def ran(
        self,
        buffer: Buffer,
        spec: BatchSpec,
        reason: FlushReason,
        waited: float,
        seconds: float,
        failed: int | None = None,
    ) -> None:
        """Tell every observer a batch ran (``failed`` None: it was cut off).

        :param buffer: the batch (its messages and calls).
        :param spec: its task.
        :param reason: why it was flushed.
        :param waited: seconds from its first message to its start.
        :param seconds: seconds it ran.
        :param failed: its messages whose outcome is an error.
        """
        report = BatchReport(
            task_name=spec.task_name,
            size=len(buffer.items),
            batch_size=spec.settings.batch_size,
            reason=reason,
            waited=waited,
            seconds=seconds,
            failed=0 if failed is None else failed,
            calls=buffer.calls,
            cut=failed is None,
        )
        self.finished(report)

    def reclaimed(self, count: int) -> None:
        """Tell every observer of reclaimed deliveries."""
        self._each("reclaimed", count)

    def _each(self, event: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                logger.exception("taskiq_batching: observer %r failed", observer)
