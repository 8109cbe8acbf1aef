"""The key under which a batched message waits in the broker, as text.

Messages that wait in the broker (``docs/fleet.md``) wait per task and
key: a batch is taken from one key's queue. The producer names the key
before sending, the worker that forwards a plain producer's message
names it from the decoded message; both call ``broker_key`` on the
message's JSON form, so they agree. It only groups: the worker still
computes each message's buffer key (``keys.batch_key``, ``batch_key``
on the validated item), and a message whose key differs from its batch
mates' runs correctly, in a batch of its own. A message's
``batch_deadline`` marks its key (``deadline_ms``), so that the key is
taken when the deadline comes, whichever worker takes it.
"""

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskiq_batching.labels import BATCH_DEADLINE_LABEL

#: The key of messages with no extra arguments and no ``batch_key``.
NO_KEY = "-"


def broker_key(
    args_after_item: Sequence[Any],
    kwargs: Mapping[str, Any],
    key_function: Callable[[Any], Any] | None = None,
    item: Any = None,
) -> str:
    """A short, stable digest of what makes messages share a batch.

    :param args_after_item: the message's positional arguments after its
        item, in their JSON form (as the message carries them).
    :param kwargs: its keyword arguments, in their JSON form.
    :param key_function: the task's ``batch_key``, if any.
    :param item: the item ``batch_key`` is called with (its value is part
        of the key; a function that raises on it adds nothing: the worker
        then tells the message's batch apart).
    :return: ``"-"`` when nothing sets messages apart, else 16 hex digits.
    """
    parts: list[Any] = [list(args_after_item), dict(kwargs)]
    if key_function is not None:
        try:
            parts.append(_stable(key_function(item)))
        except Exception:  # the worker keys it; here it only groups
            parts.append(None)
    if parts == [[], {}] or parts == [[], {}, None]:
        return NO_KEY
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _stable(value: Any) -> Any:
    """A value as JSON can write it, the same in every process."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(repr(item) for item in value)
    return value


def deadline_ms(labels: Mapping[str, Any]) -> int | None:
    """A message's ``batch_deadline`` (UNIX ms) as its key's mark in the broker.

    Read leniently, as a sender's: a value that is no number is no mark
    (the worker that takes the message rejects it, alone); NaN and
    infinities mean "now", as to the worker.

    :param labels: the message's labels.
    :return: the ms, or None.
    """
    value = labels.get(BATCH_DEADLINE_LABEL)
    if value is None or isinstance(value, bool):
        return None
    try:
        unix = float(value)
    except Exception:  # not a number, or too large for a float: no mark
        return None
    if not math.isfinite(unix):
        return 0
    return max(int(unix * 1000), 0)
