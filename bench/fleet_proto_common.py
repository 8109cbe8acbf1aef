"""Shared pieces of ``bench/fleet_proto.py``'s prototypes (no broker imports).

A *mechanism* is one way N worker processes take batches off one queue. It
has a producer side (``send``: messages with their send time) and a worker
side (``work``: take a batch, report it, ack it, run it), both written with
the raw client (redis-py, nats-py, aio-pika), not with the plugin.

Each worker reports every batch as a ``Batch`` (when it started, its key,
the send time of each message) through ``Report``, and counts the commands
it sends to the broker (``Report.count``), each with its time, so that the
harness can tell the cost at rest (a window with nothing to do) from the
cost under load.
"""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Simulated run time of one batch (seconds): the worker is busy this long.
WORK = 0.01


@dataclass(frozen=True)
class Config:
    """One run's settings, shared by the producer and every worker."""

    prefix: str
    batch_size: int = 100
    batch_timeout: float = 0.5
    keys: int = 1
    #: a batch is taken this early before its oldest message's deadline.
    slack: float = 0.005
    #: longest sleep while messages wait but no batch is due yet.
    poll: float = 0.02
    #: longest blocking call while nothing waits (the idle cost).
    idle_block: float = 2.0
    #: NATS lease: pause after the server refused a pull (409).
    backoff: float = 0.25
    #: producer: messages go to the main queue (a producer without the plugin).
    plain: bool = False
    urls: dict[str, str] = field(default_factory=dict)

    def key_of(self, index: int) -> str:
        """The key of the ``index``-th message sent (round robin)."""
        return f"k{index % self.keys}"


@dataclass
class Batch:
    """One batch as a worker started it."""

    start: float
    key: str
    sent: list[float]
    pid: int = field(default_factory=os.getpid)


class Report:
    """What a worker tells the harness: batches, and its commands' times."""

    def __init__(self, emit: Callable[[Batch], None]) -> None:
        self.emit = emit
        self.commands: list[float] = []

    def count(self, commands: int = 1) -> None:
        """Record ``commands`` sent to the broker now."""
        now = time.time()
        self.commands.extend([now] * commands)


class Mechanism(Protocol):
    """A way to share one batched queue between worker processes."""

    async def setup(self) -> None:
        """Create the queue (stream, group, consumer) before anyone uses it."""

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        """Send one message per ``(send time, key)``."""

    async def work(self, report: Report) -> None:
        """Take and run batches until cancelled (a worker process)."""

    async def close(self) -> None:
        """Close connections (not the queue)."""

    async def teardown(self) -> None:
        """Delete the queue and everything the run created."""


class LocalBuffers:
    """Per-process buffering: a buffer per key, flushed on size or
    ``batch_timeout`` after its first message *arrived here* (today), or
    after the first message's send time when ``add`` is given it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.open: dict[str, tuple[float, list[Any]]] = {}

    def add(self, key: str, item: Any, born: float | None = None) -> list[Any] | None:
        """Add; the buffer's items when it reached ``batch_size``.

        :param born: the wall-clock time the buffer's timeout counts from,
            when this message opens it (default: now).
        """
        opened = time.time() if born is None else born
        _, items = self.open.setdefault(key, (opened, []))
        items.append(item)
        if len(items) >= self.cfg.batch_size:
            del self.open[key]
            return items
        return None

    def due(self) -> list[tuple[str, list[Any]]]:
        """Buffers whose timeout passed, removed."""
        now = time.time()
        out = [
            (key, items)
            for key, (first, items) in self.open.items()
            if now - first >= self.cfg.batch_timeout
        ]
        for key, _ in out:
            del self.open[key]
        return out

    def next_due(self) -> float:
        """Seconds until the next timeout (``idle_block`` when empty)."""
        if not self.open:
            return self.cfg.idle_block
        first = min(first for first, _ in self.open.values())
        return max(0.0, first + self.cfg.batch_timeout - time.time())


async def run_batch(
    report: Report,
    key: str,
    sent: list[float],
    ack: Callable[[], Awaitable[None]],
) -> None:
    """Report the batch as started now, ack it, and be busy ``WORK``."""
    report.emit(Batch(time.time(), key, sent))
    await ack()
    await asyncio.sleep(WORK)
