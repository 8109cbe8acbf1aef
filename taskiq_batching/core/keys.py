"""Which messages may share a batch: those whose extra arguments are equal.

Two messages share a buffer only when the arguments after their item are
equal as values, compared the way Python compares them, each value
together with its type (``1``, ``1.0`` and ``True`` never mix). Printed
forms are never compared: a ``SecretStr`` or a field declared with
``repr=False`` looks the same for every tenant.
"""

import dataclasses
from collections.abc import Hashable
from typing import Any

from pydantic import BaseModel


def batch_key(args: list[Any], kwargs: dict[str, Any]) -> Hashable:
    """A hashable key that is equal exactly when the extra arguments are.

    :param args: extra positional arguments (after the item), validated.
    :param kwargs: keyword arguments, validated.
    :return: the key.
    """
    if not args and not kwargs:
        return ()
    return (
        tuple(_freeze(value) for value in args),
        tuple(sorted((name, _freeze(value)) for name, value in kwargs.items())),
    )


def item_key(value: Any) -> Hashable:
    """What a ``batch_key`` function returned, as part of a buffer's key.

    :param value: the key function's result.
    :return: a hashable key, equal exactly when the values are.
    """
    return _freeze(value)


def _freeze(value: Any) -> Hashable:
    kind = type(value)
    if kind in (str, int, float, bool, bytes) or value is None:
        return (kind, value)
    if kind in (list, tuple):
        return (kind, tuple(_freeze(item) for item in value))
    if kind is dict:
        return (kind, frozenset((_freeze(k), _freeze(v)) for k, v in value.items()))
    if kind in (set, frozenset):
        return (kind, frozenset(_freeze(item) for item in value))
    if isinstance(value, BaseModel):
        # Every field and extra, whatever its repr; secrets by their value.
        return (kind, tuple(sorted((name, _freeze(item)) for name, item in value)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [field.name for field in dataclasses.fields(value)]
        return (kind, tuple((name, _freeze(getattr(value, name))) for name in fields))
    try:
        hash(value)
    except TypeError:
        return _ByEquality(value)
    return (kind, value)


class _ByEquality:
    """An unhashable value, compared with ``==``.

    All such values of a type share one hash bucket: correct, if slower.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(type(self.value))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _ByEquality)
            and type(other.value) is type(self.value)
            and bool(other.value == self.value)
        )
