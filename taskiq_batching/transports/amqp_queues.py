"""RabbitMQ: a batched task's queue and its name.

With ``wait_in_broker=True`` each batched task waits in a queue of its
own (``amqp_batches.py``), consumed by one worker at a time.
"""

import hashlib

#: The queue argument that makes RabbitMQ deliver to one consumer at a time.
SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"
#: AMQP's longest queue name, in bytes.
MAX_NAME_BYTES = 255


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
