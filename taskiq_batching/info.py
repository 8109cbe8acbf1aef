"""``BatchInfo``: what a batch function may know about the batch it runs."""

from dataclasses import dataclass

from taskiq import Context, TaskiqMessage

from taskiq_batching.settings import FlushReason


@dataclass(slots=True)
class BatchInfo:
    """The batch being run, as a dependency of the batch function.

    Ask for it with ``batch: BatchInfo = TaskiqDepends()``. ``Context``
    in a batch function describes the batch's first message; this
    describes all of them.

    :param task_name: the batched task.
    :param flush_reason: why the batch was flushed.
    :param waited: seconds between its first message's arrival and the flush.
    :param contexts: one taskiq ``Context`` per message, in item order.
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
        """Acknowledge every message of the batch now (each at most once).

        Meant for tasks with ``ack_type=AcknowledgeType.MANUAL``; messages
        that cannot be acknowledged (no broker support) are skipped.
        """
        for ctx in self.contexts:
            if ctx.is_ackable:
                await ctx.ack()
