"""A worker whose queue is empty waits on its read: it does not spin."""

import asyncio
from collections.abc import AsyncGenerator

import pytest
from taskiq import AckableMessage

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.core.batcher import Batcher
from tests.helpers import QueueBroker, queue_broker, running_worker

pytestmark = pytest.mark.timeout(30)

#: Turns of the event loop the test gives the idle worker.
TURNS = 200


class SignallingBroker(QueueBroker):
    """Says when its listener waits on the empty queue."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
        listener = super().listen()
        while True:
            if self.queue.empty():
                self.waiting.set()
            yield await listener.__anext__()
            self.waiting.clear()


class CountingChanges:
    """Counts the futures asked of a batcher's ``changed``."""

    def __init__(self, batcher: Batcher) -> None:
        self.calls = 0
        self._changed = batcher.changed

    def changed(self) -> "asyncio.Future[None]":
        """The batcher's own future, counted."""
        self.calls += 1
        return self._changed()


async def test_an_idle_worker_waits_for_its_read_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pump took a ``changed`` future at each step and cancelled it
    # (nothing parked), which ended its wait for the read at once: while
    # the queue was empty it took every turn of the event loop (2.2 CPU-s
    # per 5 s of an idle worker; with wait_in_broker, the main queue is
    # empty all along, and the taker's drain lost the loop to it).
    broker = SignallingBroker().with_middlewares(BatchingMiddleware())
    broker.with_result_backend(queue_broker().result_backend)

    @batch_task(broker, batch_size=1)
    async def batched(items: list[int]) -> int:
        return len(items)

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    counting = CountingChanges(batcher)
    monkeypatch.setattr(batcher, "changed", counting.changed)
    async with running_worker(broker):
        task = await batched.kiq(1)
        assert (await task.wait_result(timeout=10)).return_value == 1
        await broker.waiting.wait()
        before = counting.calls
        for _ in range(TURNS):
            await asyncio.sleep(0)
        assert counting.calls - before <= 2
