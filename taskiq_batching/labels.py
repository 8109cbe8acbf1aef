"""The labels this plugin owns: their names, whose they are, which travel.

A batched task is declared with labels (``@broker.task(batch=True,
batch_size=...)``); a message may carry one label of its own
(``batch_deadline``). What the settings mean and how they are checked is
``settings.py``'s; this module only names them and says which labels a
message may carry (``wire_labels``) and whether a task batches at all
(``wants_batching``).
"""

from collections.abc import Mapping
from typing import Any

from taskiq_batching.errors import BatchConfigError

#: Label that marks a task as batched: ``@broker.task(batch=True, ...)``.
BATCH_LABEL = "batch"
#: Flush a buffer at this many messages.
BATCH_SIZE_LABEL = "batch_size"
#: Flush a buffer this many seconds after its first message.
BATCH_TIMEOUT_LABEL = "batch_timeout"
#: Bisect a failed batch to fail only its failing items.
BATCH_ISOLATE_LABEL = "batch_isolate"
#: Batch calls of the task that may run at once in one worker process.
BATCH_CONCURRENCY_LABEL = "batch_concurrency"
#: Items with different keys never share a batch (a function of the item,
#: or the name of one of its fields).
BATCH_KEY_LABEL = "batch_key"
#: Keys (open buffers) of the task one worker process keeps open at most.
BATCH_MAX_KEYS_LABEL = "batch_max_keys"
#: Batch calls of one key that may run at once in one worker process.
BATCH_KEY_CONCURRENCY_LABEL = "batch_key_concurrency"
#: The cost of an item (a function of the item, or a field name)...
BATCH_COST_LABEL = "batch_cost"
#: ...and the cost budget of one batch.
BATCH_MAX_COST_LABEL = "batch_max_cost"
#: Flush a buffer before its messages' wire bytes would exceed this.
BATCH_MAX_BYTES_LABEL = "batch_max_bytes"
#: A timer does not flush a buffer holding fewer messages than this...
BATCH_MIN_SIZE_LABEL = "batch_min_size"
#: ...until this many seconds after its first message.
BATCH_MAX_WAIT_LABEL = "batch_max_wait"
#: Items for which this predicate is false are finished without running.
BATCH_WHERE_LABEL = "batch_where"
#: A label of one message (set when sending, see ``deadline``): the UNIX
#: time, in seconds, by which its batch should start.
BATCH_DEADLINE_LABEL = "batch_deadline"

#: The labels this plugin owns. On a task without ``batch=True`` they are
#: refused (``batch=False`` switches them off explicitly); any other label
#: name is free for plain tasks.
SETTING_LABELS = frozenset(
    {
        BATCH_SIZE_LABEL,
        BATCH_TIMEOUT_LABEL,
        BATCH_ISOLATE_LABEL,
        BATCH_CONCURRENCY_LABEL,
        BATCH_KEY_LABEL,
        BATCH_MAX_KEYS_LABEL,
        BATCH_KEY_CONCURRENCY_LABEL,
        BATCH_COST_LABEL,
        BATCH_MAX_COST_LABEL,
        BATCH_MAX_BYTES_LABEL,
        BATCH_MIN_SIZE_LABEL,
        BATCH_MAX_WAIT_LABEL,
        BATCH_WHERE_LABEL,
    },
)
#: Labels of one message, never of a task.
MESSAGE_LABELS = frozenset({BATCH_DEADLINE_LABEL})
#: Labels of a batched task that only its worker reads, from its own
#: registered task; never sent (``wire_labels``).
TASK_LABELS = SETTING_LABELS | {BATCH_LABEL}


def wire_labels(labels: Mapping[str, Any]) -> dict[str, Any]:
    """Labels without those a worker knows already: what a message may carry.

    The worker recognises a batched message by its task name (its batcher's
    registry) and reads the settings from its own registered task, never
    from a message: sending them would only cost bytes in every message and
    every stored result (a ``batch_key`` function travels as its repr).
    Message labels (``batch_deadline``) and taskiq's own labels stay.

    :param labels: a task's, a kicker's or a message's labels.
    :return: a new dict, without ``batch`` and the ``batch_*`` settings.
    """
    return {name: value for name, value in labels.items() if name not in TASK_LABELS}


def wants_batching(task_name: str, labels: Mapping[str, Any]) -> bool:
    """Whether a task's labels make it a batched task.

    :param task_name: used in error messages.
    :param labels: the labels given to ``@broker.task``.
    :raises BatchConfigError: when ``batch`` is not a bool, or batch settings
        are given without ``batch=True`` or ``batch=False``.
    :return: True for ``batch=True``.
    """
    if BATCH_LABEL not in labels:
        given = sorted(SETTING_LABELS.intersection(labels))
        if given:
            raise BatchConfigError(
                f"task {task_name!r}: {', '.join(given)} need(s) batch=True "
                "(or batch=False to declare it unbatched).",
            )
        return False
    value = labels[BATCH_LABEL]
    if not isinstance(value, bool):
        raise BatchConfigError(
            f"task {task_name!r}: batch must be True or False, got {value!r}.",
        )
    return value
