"""Exceptions raised by taskiq-batching."""


class BatchingError(Exception):
    """Base class of every error raised by taskiq-batching."""


class BatchConfigError(BatchingError, ValueError):
    """A batched task was declared with invalid settings.

    Raised at decoration (registration) time, never on a worker,
    so a bad configuration cannot reach production traffic.
    """


class BatchItemError(BatchingError, ValueError):
    """One message of a batched task carries an item the task cannot accept.

    Only that message fails: its batch-mates are not affected.
    """

    def __init__(self, task_name: str, task_id: str, reason: str) -> None:
        self.task_name = task_name
        self.task_id = task_id
        self.reason = reason
        super().__init__(
            f"Message {task_id} of batched task {task_name!r} was rejected: {reason}",
        )

    def __reduce__(self) -> tuple[type["BatchItemError"], tuple[str, str, str]]:
        # Result backends pickle errors; keep the constructor's arguments.
        return (type(self), (self.task_name, self.task_id, self.reason))


class BatchTimeoutError(BatchingError, TimeoutError):
    """A batch ran longer than its task's ``timeout`` label allows.

    Every message of that batch fails with this one error.
    """

    def __init__(self, task_name: str, size: int, timeout: float) -> None:
        self.task_name = task_name
        self.size = size
        self.timeout = timeout
        super().__init__(
            f"Batch of {size} message(s) of task {task_name!r} "
            f"exceeded its timeout of {timeout:g} s",
        )

    def __reduce__(self) -> tuple[type["BatchTimeoutError"], tuple[str, int, float]]:
        return (type(self), (self.task_name, self.size, self.timeout))


class BatchResultError(BatchingError):
    """A batch function returned ``per_item(...)`` of the wrong length.

    Every message of that batch fails with this error: results are never
    matched to items by guesswork.
    """

    def __init__(self, task_name: str, items: int, results: int) -> None:
        self.task_name = task_name
        self.items = items
        self.results = results
        super().__init__(
            f"Batch of task {task_name!r} returned {results} per-item result(s) "
            f"for {items} item(s)",
        )

    def __reduce__(self) -> tuple[type["BatchResultError"], tuple[str, int, int]]:
        return (type(self), (self.task_name, self.items, self.results))


class MiddlewareMissingError(BatchConfigError):
    """A batched task was declared on a broker without ``BatchingMiddleware``."""
