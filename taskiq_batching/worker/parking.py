"""Parking: batched messages the pump read while their task had no room.

The broker is one queue for every task: to reach a plain message (or one
of another task) behind a backlog of a busy batched task, the pump reads
on and keeps that task's messages here, in order, until the task has
room. Parking is bounded in messages and in wire bytes (``Parking.full``);
past either bound the pump stops reading until room frees (backpressure),
so memory stays bounded whatever the backlog. A parked message is kept as
it was read (its bytes); its decoded copy is kept too while the parked
messages that keep one total at most ``PARK_DECODED_BYTES`` wire bytes,
else it is decoded again when its task takes it (a steady backlog of
small messages, the common case, is parked and taken with one decode
each; a decoded copy of a crafted message can take tens of times its
bytes, so that part stays small). A parked message is never dropped: at
a stop, what is still parked goes back to the broker.
"""

from collections import defaultdict, deque

from taskiq_batching.core.bounds import Bounds
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.transports.delivery import Delivery

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
#: Wire bytes of the parked messages that also keep their decoded copy, at
#: most: PARK_LIMIT messages of 256 bytes. A decoded copy takes about twice
#: its wire bytes for a usual message, up to ~30 times for a crafted one
#: (``[[],[],...]``): at most ~8 MiB more than the parked bytes.
PARK_DECODED_BYTES = 256 * 1024

#: A parked message: decoded when its copy was kept, and as read. In the
#: order ``Lifecycle.accept`` takes: a kept one is handed on as parked,
#: without a new tuple per message.
Waiting = tuple[Envelope | None, Delivery]


class Admission:
    """One pass of the pump taking messages: the task bounds, for what it takes.

    Messages taken in one pass are buffered only after the pass, so the
    pass counts what it took against the task's byte bound, and, for a
    keyed task, against the flushed batches still allowed to wait.

    :param bounds: the bounds that apply (the batcher's).
    """

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.size: defaultdict[str, int] = defaultdict(int)
        self.quota: dict[str, int | None] = {}
        #: A task's (max_held, max_held_bytes), read once per pass.
        self.limits: dict[str, tuple[int, int]] = {}

    def take(self, task_name: str, size: int) -> bool:
        """Take one message of a task if its bounds allow.

        :param task_name: a batched task.
        :param size: the message's wire bytes.
        :return: whether it was taken (counted as held by the batcher).
        """
        limits = self.limits.get(task_name)
        if limits is None:
            limits = self._start(task_name)
        bounds = self.bounds
        # The usual case, well inside both bounds of a task without keys:
        # what ``fits_bytes`` and ``try_admit`` would check, without their
        # lookups per message (the pass runs through, nothing else changes
        # the counts meanwhile).
        if (
            self.quota[task_name] is None
            and bounds.held[task_name] < limits[0]
            and bounds.held_bytes[task_name] + self.size[task_name] + size <= limits[1]
        ):
            bounds.held[task_name] += 1
            self.size[task_name] += size
            return True
        return self._take(task_name, size)

    def _start(self, task_name: str) -> tuple[int, int]:
        """A task's first message of this pass: its bounds, read once."""
        bounds = self.bounds
        bounds.changes.bind_loop()  # counts of an earlier event loop go first
        self.quota[task_name] = bounds.keyed_room(task_name)
        settings = bounds.specs[task_name].settings
        limits = self.limits[task_name] = (settings.max_held, settings.max_held_bytes)
        return limits

    def allowance(self, task_name: str) -> tuple[int, int]:
        """Messages and bytes of a task ``take`` would take on its usual path.

        Taking them needs no check per message: a run of parked messages
        within both is taken at once (``took``), the rest through ``take``.

        :param task_name: a batched task.
        :return: how many messages, how many wire bytes (0, 0 for a keyed task).
        """
        limits = self.limits.get(task_name)
        if limits is None:
            limits = self._start(task_name)
        if self.quota[task_name] is not None:
            return 0, 0
        bounds = self.bounds
        count = limits[0] - bounds.held[task_name]
        room = limits[1] - bounds.held_bytes[task_name] - self.size[task_name]
        return count, room

    def took(self, task_name: str, count: int, size: int) -> None:
        """Count a run taken within ``allowance`` as held.

        :param task_name: a batched task.
        :param count: messages taken.
        :param size: their wire bytes.
        """
        self.bounds.held[task_name] += count
        self.size[task_name] += size

    def _take(self, task_name: str, size: int) -> bool:
        """``take`` at a bound, or for a keyed task: every check, in order."""
        quota = self.quota[task_name]
        if quota == 0:
            return False
        if not self.bounds.fits_bytes(task_name, self.size[task_name] + size):
            return False
        if not self.bounds.try_admit(task_name):
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
        self.waiting: dict[str, deque[Waiting]] = {}
        self.count = 0
        self.size = 0
        #: Wire bytes of the parked messages that keep their decoded copy.
        self.decoded_size = 0

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

    def park(
        self, task_name: str, delivery: Delivery, envelope: Envelope | None = None
    ) -> None:
        """Keep a message behind its task's parked ones.

        :param task_name: its batched task.
        :param delivery: the message as read.
        :param envelope: its decoded copy, kept if ``PARK_DECODED_BYTES``
            allows (its ``size`` set by the caller).
        """
        size = len(delivery.data)
        if envelope is not None and self.decoded_size + size <= PARK_DECODED_BYTES:
            self.decoded_size += size
        else:
            envelope = None
        waiting = self.waiting.get(task_name)
        if waiting is None:  # not ``setdefault``: no deque made per message
            waiting = self.waiting[task_name] = deque()
        waiting.append((envelope, delivery))
        self.count += 1
        self.size += size

    def unpark(self, admission: Admission) -> list[Waiting]:
        """Parked messages their task takes now, in order within each task.

        :param admission: takes them (stops at a task's first refusal).
        :return: each message taken as it was parked: its decoded copy if it
            was kept (its ``size`` set when parked), and the message.
        """
        ready: list[Waiting] = []
        for task_name in list(self.waiting):
            waiting = self.waiting[task_name]
            # The run ``take`` would take on its usual path, without its call
            # per message; from the first message past it, each is asked.
            count, room = admission.allowance(task_name)
            taken = size_taken = kept_size = 0
            run = True
            for one in waiting:
                size = len(one[1].data)
                if run and (taken >= count or size_taken + size > room):
                    admission.took(task_name, taken, size_taken)
                    run = False  # the run counted: the rest one at a time
                if not run and not admission.take(task_name, size):
                    break
                taken += 1
                size_taken += size
                if one[0] is not None:
                    kept_size += size
                ready.append(one)
            if run:  # every parked message within the allowance
                admission.took(task_name, taken, size_taken)
            self._taken(task_name, taken, size_taken, kept_size)
        return ready

    def _taken(self, task_name: str, taken: int, size: int, kept_size: int) -> None:
        """Drop the first ``taken`` parked messages of a task, of those sizes."""
        waiting = self.waiting[task_name]
        self.count -= taken
        self.size -= size
        self.decoded_size -= kept_size
        if taken == len(waiting):
            del self.waiting[task_name]
        else:
            for _ in range(taken):
                waiting.popleft()

    def clear(self) -> list[Delivery]:
        """Take every parked message out (a stop gives them back).

        :return: them, task by task, in order within each task.
        """
        left = [one[1] for waiting in self.waiting.values() for one in waiting]
        self.waiting.clear()
        self.count = self.size = self.decoded_size = 0
        return left
