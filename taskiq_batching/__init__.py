"""Worker-side batching for taskiq.

Send one item per message; the worker runs the task once per batch.
"""

from taskiq_batching.buffer import BatchInfo
from taskiq_batching.config import (
    DEFAULT_BATCH_SIZE,
    BatchConfig,
    FlushReason,
    parse_batch_labels,
)
from taskiq_batching.errors import (
    BatchConfigError,
    BatchingError,
    BatchItemError,
    BatchResultError,
    BatchTimeoutError,
    MiddlewareMissingError,
)
from taskiq_batching.middleware import BatchingMiddleware
from taskiq_batching.results import PerItem, per_item
from taskiq_batching.task import BatchedTask, BatchingDecoratedTask, batch_task

__all__ = [
    "BatchConfig",
    "BatchConfigError",
    "BatchInfo",
    "BatchItemError",
    "BatchResultError",
    "BatchTimeoutError",
    "BatchedTask",
    "BatchingDecoratedTask",
    "BatchingError",
    "BatchingMiddleware",
    "DEFAULT_BATCH_SIZE",
    "FlushReason",
    "MiddlewareMissingError",
    "PerItem",
    "batch_task",
    "parse_batch_labels",
    "per_item",
]
