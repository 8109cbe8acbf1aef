"""Parking: batched messages the pump read while their task had no room.

The broker is one queue for every task: to reach a plain message (or one
of another task) behind a backlog of a busy batched task, the pump reads
on and keeps that task's messages here, in order, until the task has
room. Parking is bounded in messages and in wire bytes (``Parking.full``);
past either bound the pump stops reading until room frees (backpressure),
so memory stays bounded whatever the backlog. A parked message is kept as
it was read (its bytes, no decoded copy) and decoded again when its task
takes it; it is never dropped: at a stop, what is still parked goes back
to the broker.
"""

from collections import defaultdict, deque
from collections.abc import Iterator

from taskiq_batching.core.batcher import Batcher
from taskiq_batching.transports.base import Delivery

#: Messages parked at most on a broker with acks (a parked message stays
#: pending in the broker: a crash loses none of them). Enough to read past
#: a backlog of a slow task, few enough that one worker of a fleet does not
#: take a whole queue its siblings could be running.
PARK_LIMIT = 1_000
#: Messages parked at most on a broker without acks (a Redis list): what is
#: parked exists nowhere else, so no more than taskiq's default
#: ``--max-async-tasks`` would hold in its slots.
PARK_LIMIT_UNACKED = 100
#: Wire bytes parked at most.
PARK_BYTES = 64 * 1024 * 1024


class Admission:
    """One pass of the pump taking messages: the task bounds, for what it takes.

    Messages taken in one pass are buffered only after the pass, so the
    pass counts what it took against the task's byte bound, and, for a
    keyed task, against the flushed batches still allowed to wait.

    :param batcher: the batcher whose bounds apply.
    """

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.size: defaultdict[str, int] = defaultdict(int)
        self.quota: dict[str, int | None] = {}

    def take(self, task_name: str, size: int) -> bool:
        """Take one message of a task if its bounds allow.

        :param task_name: a batched task.
        :param size: the message's wire bytes.
        :return: whether it was taken (counted as held by the batcher).
        """
        batcher = self.batcher
        if task_name not in self.quota:
            self.quota[task_name] = batcher.bounds.keyed_room(task_name)
        quota = self.quota[task_name]
        if quota == 0:
            return False
        if not batcher.bounds.fits_bytes(task_name, self.size[task_name] + size):
            return False
        if not batcher.bounds.try_admit(task_name):
            return False
        self.size[task_name] += size
        if quota is not None:
            self.quota[task_name] = quota - 1
        return True


class Parking:
    """Batched messages waiting for room, in order within each task.

    :param acknowledged: the broker keeps what is parked until it is acked.
    """

    def __init__(self, acknowledged: bool = True) -> None:
        #: Messages parked at most before the pump stops reading.
        self.limit = PARK_LIMIT if acknowledged else PARK_LIMIT_UNACKED
        #: Wire bytes parked at most before the pump stops reading.
        self.max_bytes = PARK_BYTES
        self.waiting: dict[str, deque[Delivery]] = {}
        self.count = 0
        self.size = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, task_name: object) -> bool:
        return task_name in self.waiting

    @property
    def full(self) -> bool:
        """Whether the pump must wait for room before it reads more."""
        return self.count >= self.limit or self.size >= self.max_bytes

    def park(self, task_name: str, delivery: Delivery) -> None:
        """Keep a message behind its task's parked ones.

        :param task_name: its batched task.
        :param delivery: the message as read.
        """
        self.waiting.setdefault(task_name, deque()).append(delivery)
        self.count += 1
        self.size += len(delivery.data)

    def unpark(self, admission: Admission) -> Iterator[tuple[str, Delivery]]:
        """Parked messages their task takes now, in order within each task.

        :param admission: takes them (stops at a task's first refusal).
        :yield: each task and message taken.
        """
        for task_name in list(self.waiting):
            waiting = self.waiting[task_name]
            while waiting and admission.take(task_name, len(waiting[0].data)):
                delivery = waiting.popleft()
                self.count -= 1
                self.size -= len(delivery.data)
                yield task_name, delivery
            if not waiting:
                del self.waiting[task_name]

    def clear(self) -> list[Delivery]:
        """Take every parked message out (a stop gives them back).

        :return: them, task by task, in order within each task.
        """
        left = [delivery for waiting in self.waiting.values() for delivery in waiting]
        self.waiting.clear()
        self.count = self.size = 0
        return left
