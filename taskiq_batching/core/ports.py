"""What the batcher's parts are given: narrow interfaces, and the worker's bundle.

The flush rules see the open buffers as ``Buffers`` and the runner finishes
batches through a ``Finisher``: neither knows the ``Batcher`` (nor imports
it). ``Serving`` is what a worker hands the batcher when it starts.
"""

import asyncio
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskiq_batching.core.buffer import Buffer, Held
from taskiq_batching.core.call import Outcome, RunOptions, SpanMaker
from taskiq_batching.settings import FlushReason
from taskiq_batching.spec import BatchSpec

#: A buffer's key: its task, and its ``batch_key`` value.
Key = tuple[str, Hashable]


class Buffers(Protocol):
    """The open buffers the rules flush, and what they read to decide."""

    @property
    def specs(self) -> Mapping[str, BatchSpec]:
        """The batched tasks, by name."""

    @property
    def buffers(self) -> Mapping[Key, Buffer]:
        """The open buffers, by key, oldest first."""

    @property
    def open_keys(self) -> Mapping[str, int]:
        """Open buffers, by task."""

    @property
    def held(self) -> Mapping[str, int]:
        """Messages held, by task (``Bounds.held``)."""

    @property
    def waiting(self) -> Mapping[str, int]:
        """Messages in open buffers, by task (what ``buffered`` counts)."""

    def buffered(self, task_name: str | None = None) -> int:
        """Messages waiting in open buffers (of one task, or of all)."""

    def flush(self, key: Key, reason: FlushReason) -> None:
        """Close one buffer and queue it to run."""

    def flush_all(self, reason: FlushReason, task_name: str | None = None) -> int:
        """Flush every buffer (of one task, or of all); how many."""

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (an earlier loop's state dropped)."""


class Finisher(Protocol):
    """Finishes the messages of a batch that ran (the worker's lifecycle)."""

    async def finish(
        self,
        spec: BatchSpec,
        batch: list[Held],
        outcomes: Sequence[Outcome],
        seconds: float,
    ) -> None:
        """Store, run middlewares and ack each message, given its outcome."""


@dataclass(frozen=True)
class Serving:
    """What a worker gives the batcher when it starts serving.

    :param options: how batch functions run (taskiq's Receiver settings).
    :param validate: validate items (taskiq's ``--no-parse`` turns it off).
    :param finisher: finishes each batch's messages (None: nothing to finish).
    :param span: makes each batch's span, when the broker is traced.
    :param lost: whether the broker took a delivery back (its AMQP channel
        closed: it delivers the message again).
    """

    options: RunOptions = field(default_factory=RunOptions)
    validate: bool = True
    finisher: Finisher | None = None
    span: SpanMaker | None = None
    lost: Callable[[Any], bool] | None = None
