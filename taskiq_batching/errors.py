"""Exceptions raised by taskiq-batching.

A result backend stores an error as its class and ``args`` and the
producer rebuilds it as ``cls(*args)``: every error here keeps its
constructor's arguments as ``args`` (and formats its message in
``__str__``), so it reaches the producer with its own type.
"""

from taskiq.exceptions import SendTaskError


class BatchingError(Exception):
    """Base class of every error raised by taskiq-batching."""


class BatchConfigError(BatchingError, ValueError):
    """A batched task was declared with invalid settings.

    Raised when the task is declared (or the middleware added), never on
    a worker, so a bad configuration cannot reach production traffic.
    """


class MiddlewareMissingError(BatchConfigError):
    """A batched task was declared on a broker without ``BatchingMiddleware``."""


class BatchItemError(BatchingError, ValueError):
    """One message of a batched task carries an item the task cannot accept.

    Only that message fails: its batch-mates are not affected.

    :param task_name: the batched task.
    :param task_id: the rejected message.
    :param reason: what is wrong with its item or extra arguments.
    """

    def __init__(self, task_name: str, task_id: str, reason: str) -> None:
        super().__init__(task_name, task_id, reason)
        self.task_name = task_name
        self.task_id = task_id
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"Message {self.task_id} of batched task {self.task_name!r} "
            f"was rejected: {self.reason}"
        )


class BatchArgumentError(BatchItemError, TypeError):
    """A message's arguments do not match the batch function's parameters.

    An unknown keyword argument, more positional arguments than it takes,
    a value given twice: calling a plain task so fails with ``TypeError``
    (Python refuses the call), and so does this message (this error is a
    ``TypeError`` too), alone, when it arrives.

    :param task_name: the batched task.
    :param task_id: the rejected message.
    :param reason: which argument does not match.
    """


class BatchTimeoutError(BatchingError, TimeoutError):
    """A batch ran longer than its task's ``timeout`` label allows.

    Every message of that batch fails with this one error.

    :param task_name: the batched task.
    :param size: messages in the batch.
    :param timeout: the ``timeout`` label, in seconds.
    """

    def __init__(self, task_name: str, size: int, timeout: float) -> None:
        super().__init__(task_name, size, timeout)
        # OSError (TimeoutError's base) keeps only two of three arguments.
        self.args = (task_name, size, timeout)
        self.task_name = task_name
        self.size = size
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"Batch of {self.size} message(s) of task {self.task_name!r} "
            f"exceeded its timeout of {self.timeout:g} s"
        )


class BatchResultError(BatchingError):
    """A message's share of its batch's result cannot be used.

    Either the batch function returned ``per_item(...)`` of the wrong
    length (every message of the batch fails: results are never matched
    to items by guesswork), or the result backend could not store this
    message's result (stored in its place, so the producer is told).

    :param task_name: the batched task.
    :param reason: what went wrong.
    """

    def __init__(self, task_name: str, reason: str) -> None:
        super().__init__(task_name, reason)
        self.task_name = task_name
        self.reason = reason

    def __str__(self) -> str:
        return f"Batch of task {self.task_name!r}: {self.reason}"


class MissingDependencyError(BatchingError, ImportError):
    """A feature was set up without the optional library it needs.

    Raised when the feature is created (a metrics exporter added to a
    broker), so the producer and every worker fail at once, saying what
    to install, rather than a worker process failing at its start.

    :param feature: what was set up (a class name).
    :param module: the module it needs.
    :param extra: the package extra that installs it.
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(feature, module, extra)
        self.name = module  # ImportError's: the module that is missing
        self.feature = feature
        self.module = module
        self.extra = extra

    def __str__(self) -> str:
        return (
            f"{self.feature} needs {self.module}, which is not installed: "
            f'pip install "taskiq-batching[{self.extra}]"'
        )


class ResultBackendMissingError(BatchConfigError):
    """``map`` was called on a broker that keeps no results.

    taskiq's default ``DummyResultBackend`` says every message is done at
    once with a ``None`` result, so ``map`` would wait for nothing and its
    kill switch could never trip: it refuses before sending anything.

    :param task_name: the batched task.
    :param broker: the broker's class name.
    """

    def __init__(self, task_name: str, broker: str) -> None:
        super().__init__(task_name, broker)
        self.task_name = task_name
        self.broker = broker

    def __str__(self) -> str:
        return (
            f"map of task {self.task_name!r} waits for the results of each "
            f"chunk, but the {self.broker} has no result backend (taskiq's "
            "DummyResultBackend reports every message done at once): add one "
            "with `broker.with_result_backend(...)` (e.g. taskiq-redis's "
            "RedisAsyncResultBackend), or send with `kiq_many` without waiting."
        )


class KillSwitchTypeError(BatchConfigError, TypeError):
    """``map`` was given a ``kill_switch`` that is not a kill switch.

    Raised before anything is sent.

    :param given: a description of what was given.
    """

    def __init__(self, given: str) -> None:
        super().__init__(given)
        self.given = given

    def __str__(self) -> str:
        return (
            "map: kill_switch must be a kill switch: AnyFailed(), "
            "CountExceeded(count), RateExceeded(ratio, min_count), or an "
            f"object with a `tripped(results)` method; got {self.given}."
        )


class ListSentAsItemError(BatchingError, TypeError):
    """``kiq`` of a batched task was given a list of items, not one item.

    A batch function takes a list, but each message carries ONE of its
    items. Raised before sending, when the item type is known and the
    list is not an item itself but its elements are.

    :param task_name: the batched task.
    :param kind: the type of what was sent (``list``, ``tuple``).
    :param size: how many elements it had.
    """

    def __init__(self, task_name: str, kind: str, size: int) -> None:
        super().__init__(task_name, kind, size)
        self.task_name = task_name
        self.kind = kind
        self.size = size

    def __str__(self) -> str:
        return (
            f"batched task {self.task_name!r} takes ONE item per message, but "
            f"kiq was given a {self.kind} of {self.size} item(s): send them "
            "with `await task.kiq_many(items)` (or `await task.map(items)` to "
            "wait for their results), or one item with `await task.kiq(item)`."
        )


class SendManyError(BatchingError, SendTaskError):
    """``kiq_many`` (or ``map``) could not send every message; none was sent twice.

    Positions are indexes into the items (and into ``task_ids``). The
    items at ``not_sent`` are surely not in the broker: sending them again
    makes no duplicate. Those at ``unknown`` may or may not be (the broker
    could not be asked); every other item was sent, once.

    :param reason: what failed.
    :param task_ids: the task_id of every message, in the items' order.
    :param not_sent: positions of the messages surely not sent.
    :param unknown: positions of the messages perhaps sent.
    """

    def __init__(
        self,
        reason: str,
        task_ids: list[str],
        not_sent: list[int],
        unknown: list[int],
    ) -> None:
        # taskiq's errors take keyword arguments only: skip their __init__.
        Exception.__init__(self, reason, task_ids, not_sent, unknown)
        self.reason = reason
        self.task_ids = task_ids
        self.not_sent = not_sent
        self.unknown = unknown

    @property
    def sent(self) -> list[int]:
        """Positions of the messages sent (once each)."""
        failed = {*self.not_sent, *self.unknown}
        return [i for i in range(len(self.task_ids)) if i not in failed]

    def __str__(self) -> str:
        return (
            f"{len(self.not_sent)} of {len(self.task_ids)} message(s) were not "
            f"sent (positions {_some(self.not_sent)}) and {len(self.unknown)} "
            f"may or may not have been (positions {_some(self.unknown)}); none "
            f"was sent twice: {self.reason}"
        )

    def __repr__(self) -> str:
        # The task_ids of a large send would fill a log line: the text says it.
        return f"{type(self).__name__}({str(self)!r})"


class ConsumerNameInUseError(BatchingError):
    """A live worker process already reads a Redis stream under this consumer name.

    Processes sharing a ``consumer_name`` are one consumer to Redis: each
    would take the other's pending entries and run them. A worker process
    refuses to start (before reading anything) when another process holds
    the name and keeps holding it.

    :param consumer: the broker's ``consumer_name``.
    :param stream: the stream.
    :param group: the consumer group.
    :param holder: the process holding it (``host:pid:token``).
    """

    def __init__(self, consumer: str, stream: str, group: str, holder: str) -> None:
        super().__init__(consumer, stream, group, holder)
        self.consumer = consumer
        self.stream = stream
        self.group = group
        self.holder = holder

    def __str__(self) -> str:
        return (
            f"consumer_name={self.consumer!r} of stream {self.stream!r} (group "
            f"{self.group!r}) is in use by another live worker process "
            f"({self.holder}); processes sharing a consumer_name would take and "
            "run each other's messages. Leave consumer_name unset (taskiq-redis "
            "then picks a random one per process), or make it unique per "
            "process (e.g. add the pid; `--workers N` starts N processes)."
        )


def _some(positions: list[int], shown: int = 10) -> str:
    """At most ``shown`` positions, then how many more (for error texts)."""
    if len(positions) <= shown:
        return str(positions)
    head = ", ".join(str(p) for p in positions[:shown])
    return f"[{head}, ... {len(positions) - shown} more]"
