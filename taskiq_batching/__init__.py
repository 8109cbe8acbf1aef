"""Worker-side batching for taskiq.

Send one item per message; the worker runs the task once per batch.
"""

#: The package's version; pyproject.toml reads it from here (setuptools'
#: ``attr:``), so the distribution's metadata cannot disagree with it.
__version__ = "0.1.0"

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
from taskiq_batching.results import PerItem, per_item
from taskiq_batching.settings import (
    DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_BATCH_SIZE,
    BatchSettings,
    FlushReason,
    parse_settings,
)
from taskiq_batching.tasks import BatchingDecoratedTask
from taskiq_batching.typed import BatchedTask, batch_task

__all__ = [
    "DEFAULT_BATCH_CONCURRENCY",
    "DEFAULT_BATCH_SIZE",
    "AnyFailed",
    "BatchArgumentError",
    "BatchConfigError",
    "BatchInfo",
    "BatchItemError",
    "BatchObserver",
    "BatchReport",
    "BatchResultError",
    "BatchSettings",
    "BatchTimeoutError",
    "BatchedTask",
    "BatchingDecoratedTask",
    "BatchingError",
    "BatchingMiddleware",
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
    "parse_settings",
    "per_item",
]
