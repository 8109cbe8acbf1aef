"""Hostile messages, in one place: the behaviour suite sends them on every
path in-process (``tests/behaviour/test_hostile.py``), the integration
suite to a real ``taskiq worker`` (``tests/integration/test_hostile_input.py``,
whose app, ``hostile_app.py``, declares its task with these policies).

Each vector is a message of the batched task ``hostile``
(``items: list[Item], tenant: str = "a", note: Any = None``) that must
fail alone, with the error type it names.
"""

from typing import Any

from pydantic import BaseModel, field_validator

from taskiq_batching import BatchArgumentError, BatchItemError

#: The item of ``n`` that its validator refuses with a ``TypeError``.
UNLUCKY = 13
#: The item of ``n`` whose ``batch_where`` value cannot be tested for truth.
AMBIGUOUS = -3
#: Items of ``n`` below this are filtered out by ``batch_where``.
FILTER_BELOW = -100


class Item(BaseModel):
    """An item whose fields the policies read."""

    n: int
    cost: Any = 1
    group: Any = "g"

    @field_validator("n")
    @classmethod
    def unlucky(cls, value: int) -> int:
        if value == UNLUCKY:
            raise TypeError("unlucky")  # pydantic does not wrap a TypeError
        return value


class Ambiguous:
    """A numpy-like array: ``==`` gives another array, whose truth test raises."""

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise ValueError("the truth value of an array is ambiguous")

    def __eq__(self, other: object) -> "Ambiguous":  # type: ignore[override]
        return Ambiguous()


def where(item: Item) -> Any:
    """Filters low items; an ``AMBIGUOUS`` one gives an array."""
    return Ambiguous() if item.n == AMBIGUOUS else item.n >= FILTER_BELOW


def key(item: Item) -> Any:
    """The item's group; ``"ambiguous"`` gives a key whose ``==`` raises."""
    return Ambiguous() if item.group == "ambiguous" else item.group


def nested(depth: int) -> Any:
    """A list nested ``depth`` deep: deeper than pydantic or repr go."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


GOOD = {"n": 1}
#: name: (args, kwargs, labels, the error type its result holds)
VECTORS: dict[str, tuple[list[Any], dict[str, Any], dict[str, Any], type]] = {
    "deadline_overflows_float": (
        [GOOD],
        {},
        {"batch_deadline": 10**400},
        BatchItemError,
    ),
    "deadline_not_a_time": ([GOOD], {}, {"batch_deadline": "soon"}, BatchItemError),
    "unknown_kwarg_nested_600": ([GOOD], {"junk": nested(600)}, {}, BatchArgumentError),
    "known_kwarg_nested_600": ([GOOD], {"note": nested(600)}, {}, BatchItemError),
    "too_many_args": ([GOOD, "a", None, 3], {}, {}, BatchArgumentError),
    "no_item": ([], {}, {}, BatchItemError),
    "cost_overflows_float": ([{"n": 1, "cost": 10**400}], {}, {}, BatchItemError),
    "cost_nan": ([{"n": 1, "cost": float("nan")}], {}, {}, BatchItemError),
    "cost_not_a_number": ([{"n": 1, "cost": [1]}], {}, {}, BatchItemError),
    "validator_raises_type_error": ([{"n": UNLUCKY}], {}, {}, BatchItemError),
    "where_truth_test_raises": ([{"n": AMBIGUOUS}], {}, {}, BatchItemError),
    "key_nested_600": ([{"n": 1, "group": nested(600)}], {}, {}, BatchItemError),
    "item_of_wrong_type": (["not an item"], {}, {}, BatchItemError),
}
#: The vectors that crashed a real worker before issue 17's fixes.
CRASHED_A_WORKER = (
    "deadline_overflows_float",
    "unknown_kwarg_nested_600",
    "known_kwarg_nested_600",
    "cost_overflows_float",
    "validator_raises_type_error",
    "where_truth_test_raises",
    "key_nested_600",
)
