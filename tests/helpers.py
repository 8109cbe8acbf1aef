"""Test doubles and helpers shared by the unit tests."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from taskiq import (
    AckableMessage,
    AsyncBroker,
    BrokerMessage,
    InMemoryBroker,
    TaskiqMessage,
    TaskiqMiddleware,
    TaskiqResult,
)
from taskiq.acks import AcknowledgeType
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq.receiver import Receiver

from taskiq_batching import BatchInfo, BatchingMiddleware


class QueueBroker(AsyncBroker):
    """An in-process broker with acks, so tests can drive taskiq's Receiver.

    Records when each message is acked, and lets a test wait for a number
    of acks instead of sleeping.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[BrokerMessage] = asyncio.Queue()
        self.acked: list[str] = []
        #: Messages taken from ``queue`` by listeners.
        self.taken = 0
        self._ack_changed = asyncio.Condition()

    async def kick(self, message: BrokerMessage) -> None:
        await self.queue.put(message)

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        while True:
            message = await self.queue.get()
            self.taken += 1
            yield AckableMessage(
                data=message.message,
                ack=partial(self._ack, message.task_id),
            )

    async def _ack(self, task_id: str) -> None:
        async with self._ack_changed:
            self.acked.append(task_id)
            self._ack_changed.notify_all()

    async def wait_acked(self, count: int) -> None:
        async with self._ack_changed:
            await self._ack_changed.wait_for(lambda: len(self.acked) >= count)


class ObservedSemaphore(asyncio.Semaphore):
    """A semaphore that reports each acquire attempt as it begins.

    Put in place of a Receiver's ``sem_prefetch``: the n-th attempt means
    the Receiver is asking for its n-th delivery slot, so a test can wait
    until the Receiver blocks instead of guessing how long that takes.
    """

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.acquire_attempts: asyncio.Queue[int] = asyncio.Queue()
        self._attempts = 0

    async def acquire(self) -> Literal[True]:
        self._attempts += 1
        self.acquire_attempts.put_nowait(self._attempts)
        return await super().acquire()


def queue_broker() -> QueueBroker:
    broker = QueueBroker().with_middlewares(BatchingMiddleware())
    broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    return broker


def memory_broker(**kwargs: Any) -> InMemoryBroker:
    kwargs.setdefault("max_stored_results", -1)
    return InMemoryBroker(**kwargs).with_middlewares(BatchingMiddleware())


@dataclass
class Recorder:
    """What a batch function saw: one entry per call."""

    batches: list[list[Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    calls: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, items: list[Any], info: BatchInfo | None = None) -> None:
        self.batches.append(list(items))
        if info is not None:
            self.reasons.append(info.flush_reason.value)
        self.calls.set()

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


@contextlib.asynccontextmanager
async def running_worker(
    broker: AsyncBroker,
    *,
    max_async_tasks: int = 100,
    ack_type: AcknowledgeType | None = None,
    stop_timeout: float = 10,
    **receiver_options: Any,
) -> AsyncIterator[Receiver]:
    """Run taskiq's own Receiver on the broker, as ``taskiq worker`` does.

    ``receiver_options`` go to the Receiver (``max_prefetch``,
    ``max_tasks_to_execute``, ``wait_tasks_timeout``...).
    """
    receiver = Receiver(
        broker, max_async_tasks=max_async_tasks, ack_type=ack_type, **receiver_options
    )
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    try:
        yield receiver
    finally:
        finish.set()
        await asyncio.wait_for(listening, stop_timeout)
        await broker.shutdown()


async def push_raw(broker: QueueBroker, data: bytes, task_id: str) -> None:
    """Put bytes that are not a taskiq message on the queue."""
    await broker.queue.put(
        BrokerMessage(task_id=task_id, task_name="?", message=data, labels={}),
    )


class PrefetchQueueBroker(QueueBroker):
    """A QueueBroker that, like AMQP with a prefetch count, stops delivering
    while ``_qos`` messages are unacked (the attribute taskiq-aio-pika uses)."""

    def __init__(self, qos: int) -> None:
        super().__init__()
        self._qos = qos
        self.delivered = 0

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        while True:
            async with self._ack_changed:
                await self._ack_changed.wait_for(
                    lambda: self.delivered - len(self.acked) < self._qos,
                )
            message = await self.queue.get()
            self.delivered += 1
            yield AckableMessage(
                data=message.message,
                ack=partial(self._ack, message.task_id),
            )


class CountingMiddleware(TaskiqMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[str]] = {}

    def _count(self, hook: str, message: TaskiqMessage) -> None:
        self.calls.setdefault(hook, []).append(message.task_id)

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self._count("pre_execute", message)
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self._count("post_execute", message)

    def on_error(
        self,
        message: TaskiqMessage,
        result: TaskiqResult[Any],
        exception: BaseException,
    ) -> None:
        self._count("on_error", message)

    def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self._count("post_save", message)

    def assert_once_per_message(self, ok: list[str], failed: list[str]) -> None:
        """Each hook ran exactly once for each message, on_error for failures."""
        for hook in ("pre_execute", "post_execute", "post_save"):
            assert sorted(self.calls[hook]) == sorted(ok + failed), hook
        assert sorted(self.calls["on_error"]) == sorted(failed)
