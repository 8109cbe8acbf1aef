"""RabbitMQ: a batched task's queue, its name and its bounded backlog.

With ``wait_in_broker=True`` each batched task waits in a queue of its
own (``amqp_batches.py``), consumed by one worker at a time.
"""

import hashlib
from typing import Any

#: The queue argument that makes RabbitMQ deliver to one consumer at a time.
SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"
#: AMQP's longest queue name, in bytes.
MAX_NAME_BYTES = 255
#: Batches a task's queue holds ready at most (its ``x-max-length`` is this
#: times the task's ``batch_size``). Its one active consumer assembles
#: every batch, so a saturated drain through it is capped at what one
#: worker (and a second one taking the role in turn) can do; past this
#: backlog RabbitMQ refuses the publish (``x-overflow: reject-publish``,
#: a ``basic.nack``) and the message goes to the main queue instead,
#: where every worker reads and batches it itself (``amqp_overflow.py``).
#: Sixteen batches keep the active consumer's window full (fill as one
#: worker) while the rest of a saturated backlog is shared; with four, a
#: 2-core box at 2,000 msg/s and four workers overflowed while merely
#: behind, and its batches filled 0.56 (docs/fleet.md, sixth session).
#: Derived from ``batch_size`` alone so
#: every worker and producer declares the queue alike (RabbitMQ refuses a
#: declaration whose arguments differ).
BACKLOG_BATCHES = 16
#: RabbitMQ's queue arguments bounding the ready messages.
MAX_LENGTH = "x-max-length"
OVERFLOW = "x-overflow"
#: Past ``x-max-length``, refuse new publishes (keep the queue's head).
REJECT_PUBLISH = "reject-publish"


def backlog_arguments(batch_size: int) -> dict[str, Any]:
    """The arguments that bound a task's queue to ``BACKLOG_BATCHES`` batches.

    :param batch_size: the task's ``batch_size``.
    :return: ``x-max-length`` and ``x-overflow`` (RabbitMQ nacks a publish
        once that many messages are ready; unacked ones do not count).
    """
    return {MAX_LENGTH: BACKLOG_BATCHES * batch_size, OVERFLOW: REJECT_PUBLISH}


def batch_queue_name(queue: str, task_name: str) -> str:
    """The queue a batched task's messages wait in.

    :param queue: the broker's (first) task queue.
    :param task_name: the task.
    :return: ``<queue>.batch.<task_name>``, or with a digest of the task's
        name when that is too long for AMQP.
    """
    name = f"{queue}.batch.{task_name}"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    token = hashlib.sha1(task_name.encode(), usedforsecurity=False).hexdigest()[:16]
    return f"{queue}.batch.{token}"
