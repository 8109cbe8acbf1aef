"""Worker-side batching for taskiq.

Send one item per message; the worker runs the task once per batch.

``__all__`` is the public API: what a user writes, types and tests batched
tasks with, the errors to catch, and what observes batches. Everything
else is internal and may change (import it from its module when a test
needs it, e.g. ``taskiq_batching.settings.parse_settings``).
"""

#: The package's version; pyproject.toml reads it from here (setuptools'
#: ``attr:``), so the distribution's metadata cannot disagree with it.
__version__ = "0.1.0"

from taskiq_batching.batched_task import BatchedTask
from taskiq_batching.core.events import BatchObserver, BatchReport
from taskiq_batching.core.statistics import TaskStatistics
from taskiq_batching.errors import (
    BatchArgumentError,
    BatchConfigError,
    BatchingError,
    BatchItemError,
    BatchResultError,
    BatchTimeoutError,
    ConsumerNameInUseError,
    KillSwitchTypeError,
    ListSentAsItemError,
    MiddlewareMissingError,
    MissingDependencyError,
    ResultBackendMissingError,
    SendManyError,
)
from taskiq_batching.info import BatchInfo
from taskiq_batching.mapping import (
    AnyFailed,
    CountExceeded,
    KillSwitch,
    NotFinished,
    NotSent,
    RateExceeded,
)
from taskiq_batching.middleware import BatchingMiddleware
from taskiq_batching.producer import deadline
from taskiq_batching.receiver import BatchingReceiver
from taskiq_batching.results import PerItem, per_item
from taskiq_batching.settings import FlushReason
from taskiq_batching.typed import batch_task

__all__ = [
    "AnyFailed",
    "BatchArgumentError",
    "BatchConfigError",
    "BatchInfo",
    "BatchItemError",
    "BatchObserver",
    "BatchReport",
    "BatchResultError",
    "BatchTimeoutError",
    "BatchedTask",
    "BatchingError",
    "BatchingMiddleware",
    "BatchingReceiver",
    "ConsumerNameInUseError",
    "CountExceeded",
    "FlushReason",
    "KillSwitch",
    "KillSwitchTypeError",
    "ListSentAsItemError",
    "MiddlewareMissingError",
    "MissingDependencyError",
    "NotFinished",
    "NotSent",
    "PerItem",
    "RateExceeded",
    "ResultBackendMissingError",
    "SendManyError",
    "TaskStatistics",
    "batch_task",
    "deadline",
    "per_item",
]
