"""How an error is told: in a log line, and in a rejected message's reason.

A sender chose the values a message carries: their text may hold a
secret (``KeyError('s3cr3t')``), their ``repr`` may raise or be huge.
The helpers here never raise, shorten what they quote, and leave values
out unless the worker shows them (``BatchingMiddleware(error_values=True)``).
"""

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError


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
