"""A NATS lease round, kept per key (``batch_key`` across the fleet, issue 18 item 4).

One durable holds every key of a batched task, so the round its holder
assembles carries every key's messages. Counted as one, a round taken
full at ``batch_size`` held ~B / keys of each key, and each key's batch
was what one round brought it (measured: 0.62 of a key's ideal with 10
keys and 8 workers). Here the holder keeps each key's messages apart
(``Tb-Key``, the producer's ``broker_key``, a header): a key is handed
over alone when it is full; the round, and the holder's slot, ends when
no key is open or at the round's deadline (its first message's send +
``batch_timeout``, or an earlier ``batch_deadline``), when every key
still open is handed over (``timeout``: it runs at once). So a round
lasts at most ``batch_timeout`` and the slot passes on; a key's batch is
what the whole round brought of it. Without keys a round is what it was:
one key, full at ``batch_size``.

A key comes from a message's arguments and may be crafted: a round holds
at most ``MAX_KEYS`` keys open (a new one beyond hands the oldest over
at once, reason ``keys``) and asks for no more than ``MAX_KEYS`` x
``batch_size`` messages in all, ready ones included.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskiq_batching.core.broker_keys import NO_KEY, deadline_ms
from taskiq_batching.labels import BATCH_DEADLINE_LABEL
from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.delivery import Delivery

#: The header that carries a message's ``broker_key`` (producer, mover).
KEY_HEADER = "Tb-Key"
#: Keys one round holds open at once.
MAX_KEYS = 32
#: Characters of a key header kept (the plugin's keys are 16 hex digits).
KEY_CHARS = 64
#: Seconds before its deadline a round is handed over.
SLACK = 0.005


@dataclass
class OpenKey:
    """A key's messages in the round, and when it is full."""

    target: int
    deliveries: list[Delivery] = field(default_factory=list)
    reason: str = "timeout"


def key_of(headers: Mapping[str, Any]) -> str:
    """A message's key in the broker (``NO_KEY`` without the header)."""
    value = headers.get(KEY_HEADER)
    return str(value)[:KEY_CHARS] if value else NO_KEY


class KeyedRound:
    """The round a lease holder assembles, per key.

    :param batch_size: the task's batch size.
    :param batch_timeout: the task's timeout (None: size only).
    """

    def __init__(self, batch_size: int, batch_timeout: float | None) -> None:
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        #: Open keys, oldest first.
        self.keys: dict[str, OpenKey] = {}
        #: When the round is handed over whole (None: no deadline, or empty).
        self.due: float | None = None
        #: What the worker's short remainders lack, by key (``take``).
        self.needs: dict[str, int] = {}
        #: Keys the round opened (the last round's, once it ended).
        self.opened = 0
        self.seen = 0

    def __bool__(self) -> bool:
        return bool(self.keys)

    def held(self) -> list[Delivery]:
        """Every message of the open keys, oldest key first."""
        return [d for one in self.keys.values() for d in one.deliveries]

    def want(self, needs: Mapping[str, int]) -> list[TakenBatch]:
        """The worker's short remainders: a key is full at what it lacks.

        :param needs: what each key's short remainder lacks (the worker's).
        :return: keys full now.
        """
        self.needs = {key: n for key, n in needs.items() if n > 0}
        full = []
        for key, n in list(self.needs.items()):
            one = self.keys.get(key)
            if one is not None:
                one.target = min(one.target, n)
                if len(one.deliveries) >= one.target:
                    full.append(self._close(key, "size"))
        return full

    def add(self, delivery: Delivery, headers: Mapping[str, Any]) -> list[TakenBatch]:
        """Add a message to its key.

        :param delivery: the message.
        :param headers: its headers (its key; a ``batch_deadline``).
        :return: what it made ready: its key full, the oldest key let go.
        """
        ready: list[TakenBatch] = []
        if not self.keys and self.batch_timeout is not None:
            sent_at = delivery.sent_at or time.time()
            self.due = sent_at + self.batch_timeout - SLACK
        key = key_of(headers)
        one = self.keys.get(key)
        if one is None:
            if len(self.keys) >= MAX_KEYS:  # a crafted key, or too many: run early
                ready.append(self._close(next(iter(self.keys)), "keys"))
            target = min(self.needs.get(key, self.batch_size), self.batch_size)
            one = self.keys[key] = OpenKey(target)
            self.opened += 1
        one.deliveries.append(delivery)
        value = headers.get(BATCH_DEADLINE_LABEL)
        ms = None if value is None else deadline_ms({BATCH_DEADLINE_LABEL: value})
        if ms is not None:
            one.reason = "deadline"
            if self.due is None or ms / 1000 - SLACK < self.due:
                self.due = ms / 1000 - SLACK
        if len(one.deliveries) >= one.target:
            ready.append(self._close(key, "size"))
        return ready

    def owed(self, pending: int) -> int:
        """Messages the next request asks for.

        One key (no ``batch_key``): what fills it, so that the request
        ends with the batch and the slot passes on. Several: what would
        fill them all (at least ``batch_size``), so that the request ends
        at the round's deadline, not between two requests where another
        process's request would take the slot and split the keys.
        Keyed, a round's first request asks for as many keys' worth as
        the last round held.

        :param pending: messages handed over and not taken by the worker.
        :return: 0 or less: the round holds all it may.
        """
        lacks = [one.target - len(one.deliveries) for one in self.keys.values()]
        held = sum(len(one.deliveries) for one in self.keys.values())
        room = MAX_KEYS * self.batch_size - pending - held
        if len(self.keys) > 1 or (not self.keys and self.seen > 1):
            wanted = max(sum(lacks), self.batch_size * max(self.seen, 1))
            return min(wanted, room)
        return min(self.batch_size, room, *lacks, *self.needs.values())

    def expires(self, now: float, idle_seconds: float) -> float:
        """Seconds the next request may wait: until the round's deadline.

        :param now: the time.
        :param idle_seconds: with nothing open, the idle request's wait.
        :return: seconds (0 or less: due).
        """
        if self.keys and self.due is not None:
            return self.due - now
        if not self.keys and self.seen > 1 and self.batch_timeout is not None:
            # Keyed, it asks for several keys' worth: not for longer than a
            # round lasts (its first message's deadline is as far).
            return self.batch_timeout
        return idle_seconds

    def is_due(self, now: float) -> bool:
        """Whether the round's deadline has come."""
        return bool(self.keys) and self.due is not None and self.due <= now

    def end(self) -> list[TakenBatch]:
        """Hand every open key over (the round's deadline, or enough held)."""
        return [self._close(key, self.keys[key].reason) for key in list(self.keys)]

    def _close(self, key: str, reason: str) -> TakenBatch:
        one = self.keys.pop(key)
        if reason == "size":
            self.needs.pop(key, None)  # its short remainder is served
        if not self.keys:  # the round ends
            self.due = None
            self.seen, self.opened = min(self.opened, MAX_KEYS), 0
        return TakenBatch(key, one.deliveries, reason)
