"""A task's room: how many batches the taker may take from the broker now.

The taker (``worker/taking.py``) asks before each take: ``room`` for the
batches that may start now, ``ahead`` for one full batch that may wait
for a slot. Both count from the runner (batches running and queued, keys
busy) and the held bounds (``max_held``); the batcher gives the messages
of the task's fullest open buffer (``topping``), which a take may top up.
"""

from collections.abc import Mapping

from taskiq_batching.core.buffer import Buffer
from taskiq_batching.core.ports import Key
from taskiq_batching.core.scheduling import Runner


def topping(
    buffers: Mapping[Key, Buffer], waiting: Mapping[str, int], task: str
) -> int:
    """Messages in a task's fullest open buffer (0: none open).

    :param buffers: the open buffers, by key.
    :param waiting: messages in open buffers, by task.
    :param task: a batched task.
    :return: how many.
    """
    if not waiting[task]:
        return 0
    return max((len(b.items) for (t, _), b in buffers.items() if t == task), default=0)


def room(runner: Runner, task_name: str, topping: int = 0) -> int:
    """Whole batches of a task that may start now (taken from the broker).

    What ``batch_concurrency``, ``max_concurrent_batches`` and, for a
    keyed task, ``batch_max_keys`` (distinct keys running or waiting
    to run) leave, counting the batches already queued, and no more
    full batches than the task's held bound (``max_held``) has room for
    (``held_room``).

    :param runner: the worker's runner.
    :param task_name: a batched task.
    :param topping: messages in its fullest open buffer.
    :return: how many (0: wait for a change).
    """
    settings = runner.specs[task_name].settings
    free = min(
        settings.concurrency - runner.running[task_name] - runner.backlog[task_name],
        runner.max_concurrent_batches - len(runner.tasks) - len(runner.ready),
    )
    if settings.key is not None and settings.max_keys is not None:
        busy = {b.key for b in runner.tasks.values() if b.task_name == task_name}
        busy.update(b.key for b, _ in runner.ready if b.task_name == task_name)
        free = min(free, settings.max_keys - len(busy))
    return max(min(free, held_room(runner, task_name, topping)), 0)


def held_room(runner: Runner, task_name: str, topping: int) -> int:
    """Full batches the task's held bound (``max_held``) has room for.

    A taken batch's short remainder waiting in an open buffer is topped
    up by a take of what it lacks, so the fullest one is not held
    against the bound: one take may then pass ``max_held`` by less than
    a batch (a fresh batch where a top-up was allowed for), and the
    next finds no room. Counting every open remainder instead let a
    keyed task hold a remainder per key beyond the bound, and take
    that many fresh batches on top.
    """
    settings = runner.specs[task_name].settings
    held = settings.max_held - runner.bounds.held[task_name] + topping
    return held // settings.batch_size


def ahead(runner: Runner, task_name: str, topping: int = 0) -> bool:
    """Whether one full batch of a task may be taken to wait for a slot.

    When every slot of the task runs and none waits, the next full
    batch may wait in the ready queue, as today's worker fills one
    buffer while its batches run (``max_held`` counts it): the take
    then overlaps the running batch instead of following it.

    :param runner: the worker's runner.
    :param task_name: a batched task whose ``room`` is 0.
    :param topping: messages in its fullest open buffer.
    :return: whether a full batch may be taken ahead.
    """
    if runner.backlog[task_name] or not runner.running[task_name]:
        return False
    # A batch waiting counts against every task's process-wide room:
    # one taken ahead must leave a slot for the others.
    if runner.max_concurrent_batches - len(runner.tasks) - len(runner.ready) < 2:
        return False
    settings = runner.specs[task_name].settings
    if settings.key is not None and settings.max_keys is not None:
        return False  # the keys running or waiting are bounded
    return held_room(runner, task_name, topping) >= 1
