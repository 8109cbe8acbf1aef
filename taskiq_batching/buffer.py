"""Buffers of waiting messages, and what a batch function sees of its batch."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker, Context, TaskiqMessage
from taskiq.acks import AckController

from taskiq_batching.config import FlushReason
from taskiq_batching.results import Outcome


@dataclass(slots=True)
class Envelope:
    """What a buffered message keeps of its taskiq message.

    A decoded ``TaskiqMessage`` (a pydantic model) costs about 2 KB; these
    parts about half of that. The model is rebuilt when the batch is done.
    """

    task_id: str
    task_name: str
    labels: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, message: TaskiqMessage) -> "Envelope":
        """Keep the parts of a message.

        :param message: a decoded message, labels parsed.
        :return: its envelope.
        """
        return cls(
            message.task_id,
            message.task_name,
            message.labels,
            message.args,
            message.kwargs,
        )

    def open(self) -> TaskiqMessage:
        """Rebuild the message (labels already parsed, not validated again).

        :return: the taskiq message.
        """
        return TaskiqMessage.model_construct(
            task_id=self.task_id,
            task_name=self.task_name,
            labels=self.labels,
            labels_types=None,
            args=self.args,
            kwargs=self.kwargs,
        )


@dataclass(slots=True)
class PendingItem:
    """One message waiting in a buffer.

    :param item: the validated item (the message's first argument).
    :param message: the taskiq message, or its envelope (see ``Envelope``).
    :param context: its taskiq context, when taskiq's callback made one;
        otherwise made on demand (see ``context_for``), which keeps a
        buffered message small.
    :param outcome: resolved when the batch that holds the item finishes,
        for a message whose taskiq callback waits for it; None for one the
        worker finishes itself, in bulk with its batch (see ``direct.py``).
    :param ack: that message's ack (None when the broker has none).
    """

    item: Any
    message: TaskiqMessage | Envelope
    context: Context | None = None
    outcome: "asyncio.Future[Outcome] | None" = None
    ack: "Callable[[], Awaitable[None] | None] | None" = None

    def context_for(self, broker: AsyncBroker) -> Context:
        """The message's taskiq context (made once, when first needed).

        :param broker: the broker the message came from.
        :return: the context.
        """
        if self.context is None:
            message = self.taskiq_message()
            self.context = Context(message, broker, AckController(self.ack))
        return self.context

    def taskiq_message(self) -> TaskiqMessage:
        """The taskiq message, rebuilt from its envelope if need be.

        :return: the message.
        """
        if isinstance(self.message, Envelope):
            self.message = self.message.open()
        return self.message


@dataclass(slots=True)
class Buffer:
    """Messages of one task, with equal extra arguments, waiting to run together.

    :param task_name: the batched task.
    :param args: positional arguments after the item, shared by every message.
    :param kwargs: keyword arguments, shared by every message.
    :param opened_at: event-loop time of the first item, in seconds.
    """

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    opened_at: float
    items: list[PendingItem] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Stop the buffer's timer: it is being flushed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(slots=True)
class BatchInfo:
    """The batch being run, as a dependency of the batch function.

    Ask for it with ``batch: BatchInfo = TaskiqDepends()``. ``Context``
    in a batch function describes the batch's first message; this
    describes all of them.

    :param task_name: the batched task.
    :param flush_reason: why the batch was flushed.
    :param waited: seconds between the first item's arrival and the flush.
    :param contexts: one taskiq context per message, in item order.
    :param isolating: True when this call re-runs part of a failed batch
        to find its failing items (``batch_isolate=True``).
    """

    task_name: str
    flush_reason: FlushReason
    waited: float
    contexts: list[Context]
    isolating: bool = False

    @property
    def size(self) -> int:
        """Number of messages (items) in the batch."""
        return len(self.contexts)

    @property
    def messages(self) -> list[TaskiqMessage]:
        """The taskiq message of every item, in item order."""
        return [ctx.message for ctx in self.contexts]

    @property
    def task_ids(self) -> list[str]:
        """The task_id of every item, in item order."""
        return [ctx.message.task_id for ctx in self.contexts]

    async def ack(self) -> None:
        """Acknowledge every message of the batch now.

        Meant for tasks with ``ack_type=AcknowledgeType.MANUAL``; messages
        that cannot be acknowledged (no broker support) are skipped.
        """
        for ctx in self.contexts:
            if ctx.is_ackable:
                await ctx.ack()
