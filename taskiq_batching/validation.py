"""Checking one setting's value; every refusal is a ``BatchConfigError``.

Each message names the task, the setting, the value given and what is
accepted, so that a wrong declaration fails where it is written.
"""

import contextlib
import datetime
import math
from collections.abc import Callable, Mapping
from typing import Any

from taskiq.acks import AcknowledgeType, parse_acknowledge_type

from taskiq_batching.errors import BatchConfigError

#: A function of one item.
ItemFunction = Callable[[Any], Any]


def seconds(where: str, name: str, value: Any) -> float:
    """A duration setting in seconds: a number, or a ``datetime.timedelta``.

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :raises BatchConfigError: unless it is a finite duration > 0.
    :return: the duration in seconds.
    """
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BatchConfigError(
            f"{where}: {name} must be a finite number of seconds > 0 "
            f"(or a timedelta), got {value!r}.",
        )
    return float(value)


def count(where: str, name: str, value: Any, unit: str) -> int:
    """A count setting: an int >= 1.

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :param unit: what it counts, for error messages.
    :raises BatchConfigError: unless it is an int >= 1.
    :return: the count.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchConfigError(
            f"{where}: {name} must be an int >= 1 ({unit}), got {value!r}.",
        )
    return value


def wire_bytes(where: str, name: str, value: Any) -> int:
    """A size in bytes of messages as sent: an int >= 1.

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :raises BatchConfigError: unless it is an int >= 1.
    :return: the size.
    """
    return count(where, name, value, "bytes of messages as sent")


def budget(where: str, name: str, value: Any) -> float:
    """A cost budget: a finite number > 0.

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :raises BatchConfigError: unless it is a finite number > 0.
    :return: the budget.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BatchConfigError(
            f"{where}: {name} must be a finite number > 0 (the cost budget of "
            f"a batch), got {value!r}.",
        )
    return float(value)


def item_function(where: str, name: str, value: Any) -> ItemFunction:
    """A function of the item: a callable, or the name of a field of the item.

    A field name reads ``item[name]`` from a mapping, else ``item.name``
    (a pydantic model, a dataclass, any object).

    :param where: the task, for error messages.
    :param name: the setting, for error messages.
    :param value: the value given.
    :raises BatchConfigError: unless it is a callable or a non-empty str.
    :return: the function.
    """
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and value:
        return _field(value)
    raise BatchConfigError(
        f"{where}: {name} must be a function of the item or the name of one "
        f"of its fields (a str), got {value!r}.",
    )


def _field(name: str) -> ItemFunction:
    def field(item: Any) -> Any:
        if isinstance(item, Mapping):
            return item[name]
        return getattr(item, name)

    field.__qualname__ = f"field[{name}]"
    return field


def task_timeout(task_name: str, labels: Mapping[str, Any]) -> float | None:
    """The ``timeout`` label of a batched task, in seconds: it limits each batch call.

    :param task_name: used in error messages.
    :param labels: the task's labels.
    :raises BatchConfigError: when it is not a number of seconds > 0.
    :return: the timeout, or None without one.
    """
    value = labels.get("timeout")
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return seconds(f"batched task {task_name!r}", "timeout", value)


def task_ack_type(task_name: str, labels: Mapping[str, Any]) -> AcknowledgeType | None:
    """The ``ack_type`` label of a batched task, checked as taskiq would.

    :param task_name: used in error messages.
    :param labels: the task's labels.
    :raises BatchConfigError: when taskiq would refuse it.
    :return: the ack type, or None to use the worker's ``--ack-type``.
    """
    value = labels.get("ack_type")
    if value is None:
        return None
    try:
        return parse_acknowledge_type(value)
    except ValueError:
        accepted = ", ".join(repr(kind.value) for kind in AcknowledgeType)
        raise BatchConfigError(
            f"batched task {task_name!r}: ack_type must be one of {accepted} "
            f"(or an AcknowledgeType), got {value!r}.",
        ) from None
