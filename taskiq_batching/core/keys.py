"""Which messages may share a batch: those whose extra arguments are equal.

Two messages share a buffer only when the arguments after their item are
equal as values, compared the way Python compares them, each value
together with its type (``1``, ``1.0`` and ``True`` never mix). Printed
forms are never compared: a ``SecretStr`` or a field declared with
``repr=False`` looks the same for every tenant.

Any sender can choose these values, so a key never fails later, when a
buffer is looked up, flushed or compared with another message's: a value
nested deeper than ``MAX_DEPTH`` is refused when it is frozen (the
message fails alone), and a value of another type is wrapped so that
hashing it or comparing it cannot raise (an error counts as "not equal":
it gets a buffer of its own).
"""

import dataclasses
from collections.abc import Hashable
from typing import Any

from pydantic import BaseModel

#: Deepest nesting of lists, dicts, sets, models... in one argument. Keys
#: are compared in C, recursively: this keeps any two well inside Python's
#: recursion limit.
MAX_DEPTH = 64

_SCALARS = (str, int, float, bool, bytes, type(None))


class Unkeyable(ValueError):
    """A value cannot be part of a buffer key (nested deeper than ``MAX_DEPTH``).

    :param where: the argument, as an error names it.
    """

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where

    def __str__(self) -> str:
        return f"{self.where} is nested deeper than {MAX_DEPTH} levels"


def batch_key(args: list[Any], kwargs: dict[str, Any]) -> Hashable:
    """A hashable key that is equal exactly when the extra arguments are.

    :param args: extra positional arguments (after the item), validated.
    :param kwargs: keyword arguments, validated.
    :raises Unkeyable: when an argument is nested too deep.
    :return: the key.
    """
    if not args and not kwargs:
        return ()
    return (
        tuple(
            _frozen(value, f"positional argument {index}")
            for index, value in enumerate(args, start=1)
        ),
        tuple(
            sorted(
                (name, _frozen(value, f"argument {name!r}"))
                for name, value in kwargs.items()
            )
        ),
    )


def item_key(value: Any) -> Hashable:
    """What a ``batch_key`` function returned, as part of a buffer's key.

    :param value: the key function's result.
    :raises Unkeyable: when it is nested too deep.
    :return: a hashable key, equal exactly when the values are.
    """
    return _frozen(value, "the value of batch_key")


def _frozen(value: Any, where: str) -> Hashable:
    try:
        return _freeze(value, MAX_DEPTH)
    except _TooDeep:
        raise Unkeyable(where) from None


class _TooDeep(Exception):
    pass


def _freeze(value: Any, depth: int) -> Hashable:
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if depth == 0:
        raise _TooDeep
    depth -= 1
    if kind in (list, tuple):
        return (kind, tuple(_freeze(item, depth) for item in value))
    if kind is dict:
        return (
            kind,
            frozenset((_freeze(k, depth), _freeze(v, depth)) for k, v in value.items()),
        )
    if kind in (set, frozenset):
        return (kind, frozenset(_freeze(item, depth) for item in value))
    if isinstance(value, BaseModel):
        # Every field and extra, whatever its repr; secrets by their value.
        return (
            kind,
            tuple(sorted((name, _freeze(item, depth)) for name, item in value)),
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [field.name for field in dataclasses.fields(value)]
        return (
            kind,
            tuple((name, _freeze(getattr(value, name), depth)) for name in fields),
        )
    return _Opaque(value)


class _Opaque:
    """A value of any other type, compared with its own ``==``, never raising.

    Its hash is taken once, when it is frozen; an unhashable value (or one
    whose ``__hash__`` raises) shares its type's hash bucket: correct, if
    slower. Equality needs the same type and ``==`` true; an ``==`` (or a
    truth test of its result, as with arrays) that raises means unequal.
    """

    __slots__ = ("hash", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        try:
            self.hash = hash((type(value), value))
        except Exception:
            self.hash = hash(type(value))

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Opaque) or type(other.value) is not type(self.value):
            return False
        if other.value is self.value:
            return True
        try:
            return bool(other.value == self.value)
        except Exception:
            return False
