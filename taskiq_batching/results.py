"""Per-item results: ``return per_item(values)`` gives each message its own."""

import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PerItem(Generic[_T]):
    """A batch function's return value with one result per item.

    Made by :func:`per_item`. Position ``i`` is the result of item ``i``;
    an exception at a position fails only that item's message (and only
    it is retried by taskiq's retry middlewares).

    :param values: the results, aligned with the batch's items.
    """

    values: Sequence[_T | BaseException]


def per_item(values: Iterable[_T | BaseException]) -> PerItem[_T]:
    """Give each item of the batch its own result.

    >>> return per_item(row.id if ok else ValueError("duplicate") for ...)

    :param values: one result (or exception) per item, in item order.
    :return: the value to return from the batch function.
    """
    return PerItem(list(values))


def item_result_type(return_type: Any) -> Any:
    """The type of one message's result, given the batch function's return type.

    :param return_type: the batch function's return annotation.
    :return: ``T`` for ``PerItem[T]``, else ``return_type`` itself.
    """
    if typing.get_origin(return_type) is PerItem:
        return typing.get_args(return_type)[0]
    if return_type is PerItem:
        return None
    return return_type
