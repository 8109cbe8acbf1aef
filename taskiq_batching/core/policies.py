"""A message's admission: its arguments, its buffer key, its policies, its deadline.

Computed once per message, when it is added (``Batcher.add``), from what
its sender chose: any value, nested any depth, numbers at the edges of
float, objects whose comparisons or truth tests raise, and the user's own
functions (validators, ``batch_where``/``batch_key``/``batch_cost``),
which may raise too. Whatever fails in there fails that message alone,
with ``BatchItemError`` (or its ``TypeError`` subclass
``BatchArgumentError``): ``admit`` is the one guard around all of it, so
no message can take its batch-mates, its chunk or the worker down.
"""

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from taskiq_batching.core.buffer import Held
from taskiq_batching.core.keys import Unkeyable, batch_key, item_key
from taskiq_batching.error_texts import error_text, shown
from taskiq_batching.errors import BatchItemError
from taskiq_batching.labels import BATCH_DEADLINE_LABEL
from taskiq_batching.spec import BatchSpec


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


#: An admitted message's validated arguments and its place: its extra
#: positional arguments, its keyword arguments (defaults filled), its
#: buffer's key within its task (arguments and ``batch_key``), its
#: policies' verdict (None when it has none). A plain tuple: made once per
#: message, a named tuple's would be a copy of it.
Admission = tuple[list[Any], dict[str, Any], Hashable, Placement | None]


#: The extra arguments of a message with none, shared: read only (a buffer
#: keeps copies of its first message's), not two objects more per message.
_NO_ARGS: list[Any] = []
_NO_KWARGS: dict[str, Any] = {}


def admit(
    spec: BatchSpec,
    held: Held,
    now: float,
    validate: bool = True,
    values: bool = False,
) -> Admission:
    """Everything a message needs to join a buffer; any failure is its own.

    Sets its ``item``.

    :param spec: the task's spec.
    :param held: the message.
    :param now: the event loop's time.
    :param validate: validate its arguments (``--no-parse`` turns it off).
    :param values: show the values that fail in errors (opt-in: an item
        may hold a secret).
    :raises ItemFiltered: when ``batch_where`` is false for its item.
    :raises BatchItemError: when anything about it fails, whatever the
        exception (``BatchArgumentError`` for arguments the function's
        parameters refuse).
    :return: its admission.
    """
    try:
        # Inline, not a call of its own: it runs for every message.
        message = held.message
        signature, given = spec.signature, message.args
        if (
            validate
            and len(given) == 1
            and not message.kwargs
            and type(given[0]) is signature.plain_item
            and not signature.keywords
        ):
            # What ``prepare`` gives the usual message (one item of the
            # parameter's own plain type), without its call per message.
            held.item = given[0]
            args, kwargs = _NO_ARGS, _NO_KWARGS
            key: Hashable = ()
        else:
            held.item, args, kwargs = signature.prepare(
                spec.task_name,
                message.task_id,
                given,
                message.kwargs,
                validate=validate,
                values=values,
            )
            key = batch_key(args, kwargs) if args or kwargs else ()
        placement = None
        if spec.has_policies or BATCH_DEADLINE_LABEL in message.labels:
            placement = place(spec, held, now, values)
            if placement.key != ():
                key = (key, placement.key)
        return args, kwargs, key, placement
    except (BatchItemError, ItemFiltered):
        raise
    except Unkeyable as exc:
        raise BatchItemError(spec.task_name, held.task_id, str(exc)) from None
    except Exception as exc:
        raise BatchItemError(
            spec.task_name,
            held.task_id,
            f"admitting it raised {error_text(exc, values)}",
        ) from None


def place(spec: BatchSpec, held: Held, now: float, values: bool = False) -> Placement:
    """Apply a task's policies to one message whose item is validated.

    :param spec: the task's spec.
    :param held: the message, its ``item`` set.
    :param now: the event loop's time.
    :param values: show the values that fail in errors.
    :raises ItemFiltered: when ``batch_where`` is false for its item.
    :raises BatchItemError: when a policy function fails on its item, or
        gives what a policy cannot use.
    :return: its placement.
    """
    settings = spec.settings
    where = settings.where is None or _call(spec, held, "batch_where", bool, values)
    if not where:
        raise ItemFiltered
    key: Hashable = ()
    if settings.key is not None:
        key = _call(spec, held, "batch_key", item_key, values)
    cost = 0.0
    if settings.cost is not None:
        cost = _cost(spec, held, _call(spec, held, "batch_cost", _same, values), values)
    return Placement(key, cost, _deadline(held, now, values))


def _same(value: Any) -> Any:
    return value


def _call(
    spec: BatchSpec,
    held: Held,
    name: str,
    then: Callable[[Any], Any],
    values: bool,
) -> Any:
    """A policy function's value for the item, then ``then`` of it.

    ``then`` (a truth test, the freezing of a key) runs user objects'
    methods too: it is guarded with the call.
    """
    function = getattr(spec.settings, name.removeprefix("batch_"))
    try:
        return then(function(held.item))
    except Unkeyable as exc:
        raise BatchItemError(spec.task_name, held.task_id, str(exc)) from None
    except Exception as exc:
        raise BatchItemError(
            spec.task_name,
            held.task_id,
            f"{name} failed on its item: {error_text(exc, values)}",
        ) from None


def _cost(spec: BatchSpec, held: Held, value: Any, values: bool) -> float:
    """A cost as a float, refused unless a finite number >= 0.

    An int too large for a float (``10**400``) is not finite: ``float``
    raises ``OverflowError`` on it, so the value is converted first, its
    checks made on the float.
    """
    cost = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            cost = float(value)
        except (OverflowError, ValueError, TypeError):
            cost = math.nan
    if math.isfinite(cost) and cost >= 0:
        return cost
    given = shown(value) if values else f"a value of type {type(value).__name__}"
    raise BatchItemError(
        spec.task_name,
        held.task_id,
        f"batch_cost gave {given} for its item; a cost is a finite number >= 0",
    )


def _deadline(held: Held, now: float, values: bool) -> float | None:
    """The message's ``batch_deadline`` label (UNIX seconds) in event-loop time.

    Any sender sets it: a value that is no number (or too large for a
    float, as ``10**400``) fails the message; NaN and infinities mean
    "now" (its batch starts at once).
    """
    value = held.message.labels.get(BATCH_DEADLINE_LABEL)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        unix = float(value)
    except Exception:
        given = f" {shown(value)}" if values else ""
        raise BatchItemError(
            held.message.task_name,
            held.task_id,
            f"its batch_deadline label{given} is not a UNIX time in seconds",
        ) from None
    if not math.isfinite(unix):
        return now
    return now + (unix - time.time())
