"""A message's place under its task's policies: filter, key, cost, deadline.

Evaluated once per message, when it is added (``Batcher.add``), from its
validated item. The user's functions may raise: only that message fails,
with ``BatchItemError``.
"""

import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from taskiq_batching.core.buffer import Held
from taskiq_batching.core.keys import item_key
from taskiq_batching.core.run import BatchSpec
from taskiq_batching.errors import BatchItemError, describe
from taskiq_batching.settings import BATCH_DEADLINE_LABEL


class ItemFiltered(Exception):
    """The item fails its task's ``batch_where``: finish it without running."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an admitted message goes.

    :param key: its part of the buffer key (``batch_key``'s value), or ().
    :param cost: its cost under ``batch_cost`` (0 without one).
    :param deadline: event-loop time by which its batch should start, or None.
    """

    key: Hashable
    cost: float
    deadline: float | None


def place(spec: BatchSpec, held: Held, now: float) -> Placement:
    """Apply a task's policies to one message whose item is validated.

    :param spec: the task's spec.
    :param held: the message, its ``item`` set.
    :param now: the event loop's time.
    :raises ItemFiltered: when ``batch_where`` is false for its item.
    :raises BatchItemError: when a policy function fails on its item.
    :return: its placement.
    """
    settings = spec.settings
    item = held.item
    if settings.where is not None and not _call(spec, held, "batch_where", item):
        raise ItemFiltered
    key: Hashable = ()
    if settings.key is not None:
        key = item_key(_call(spec, held, "batch_key", item))
    cost = 0.0
    if settings.cost is not None:
        cost = _cost(spec, held, _call(spec, held, "batch_cost", item))
    return Placement(key, cost, _deadline(held, now))


def _call(spec: BatchSpec, held: Held, name: str, item: Any) -> Any:
    function = getattr(spec.settings, name.removeprefix("batch_"))
    try:
        return function(item)
    except Exception as exc:
        raise BatchItemError(
            spec.task_name, held.task_id, f"{name} failed on its item: {describe(exc)}"
        ) from None


def _cost(spec: BatchSpec, held: Held, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise BatchItemError(
            spec.task_name,
            held.task_id,
            f"batch_cost gave {value!r} for its item; a cost is a finite number >= 0",
        )
    return float(value)


def _deadline(held: Held, now: float) -> float | None:
    """The message's ``batch_deadline`` label (UNIX seconds) in event-loop time."""
    value = held.message.labels.get(BATCH_DEADLINE_LABEL)
    if value is None:
        return None
    try:
        unix = float(value)
    except (TypeError, ValueError):
        raise BatchItemError(
            held.message.task_name,
            held.task_id,
            f"its batch_deadline label {value!r} is not a UNIX time in seconds",
        ) from None
    if not math.isfinite(unix):
        return now
    return now + (unix - time.time())
