"""Exceptions raised by taskiq-batching.

A result backend stores an error as its class and ``args`` and the
producer rebuilds it as ``cls(*args)``: every error here keeps its
constructor's arguments as ``args`` (and formats its message in
``__str__``), so it reaches the producer with its own type.
"""

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError


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


def describe(error: BaseException) -> str:
    """An error for a log line: its type and its text.

    Some libraries' ``repr`` hides the text (redis-py 8 shows
    ``server:ResponseError`` for a ``NOGROUP`` error).

    :param error: any exception.
    :return: ``"Type: text"``, or the type alone when it has no text.
    """
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def error_text(error: BaseException, values: bool) -> str:
    """An error raised on a message's values, for its ``BatchItemError``.

    Its text may quote the value that caused it (``KeyError('s3cr3t')``):
    only its type is given unless the worker shows values.

    :param error: the exception.
    :param values: give its text too.
    :return: ``"Type"``, or ``"Type: text"`` when ``values``.
    """
    if values:
        return _safe(describe, error)
    return type(error).__name__


def shown(value: object, limit: int = 80) -> str:
    """A value's ``repr`` for an error message, shortened; it never raises.

    :param value: any value (a sender chose it: its ``repr`` may raise, or
        be huge, as an int of 10**5000 digits).
    :param limit: the most characters kept.
    :return: its ``repr``, at most ``limit`` characters.
    """
    text = _safe(repr, value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe(function: Callable[[Any], str], value: object) -> str:
    try:
        return function(value)
    except Exception as exc:
        return f"<{type(value).__name__}: its text raised {type(exc).__name__}>"


#: Validation errors named in one message, at most.
_ERRORS_SHOWN = 3


def validation_text(exc: Exception, values: bool) -> str:
    """What failed in a validation: each error's field path and pydantic type.

    pydantic's messages and inputs are left out unless ``values``: a
    message may quote the input (a validator's ``ValueError``), and the
    input is the value itself. An exception other than a validation error
    (a validator raising ``TypeError``) is named by its type.

    :param exc: what validating the value raised.
    :param values: give pydantic's messages and inputs too.
    :return: the errors, for a ``BatchItemError``'s reason.
    """
    if not isinstance(exc, ValidationError):
        return f"its validation raised {error_text(exc, values)}"
    errors = exc.errors(include_url=False)
    shown_errors = "; ".join(_error(error, values) for error in errors[:_ERRORS_SHOWN])
    more = len(errors) - _ERRORS_SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    return f"{len(errors)} validation error(s): {shown_errors}{tail}"


def _error(error: Any, values: bool) -> str:
    path = ".".join(str(part) for part in error["loc"])
    text = f"{path}: {error['type']}" if path else str(error["type"])
    if values:
        text += f" ({error['msg']}; input {shown(error.get('input'), 40)})"
    return text
