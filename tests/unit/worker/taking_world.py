"""A worker's world for the taker's tests (``test_taking*.py``).

A fake ``BatchSource`` stands for the broker (``fake_source.py``); the
worker is taskiq's own Receiver over an in-process queue broker, whose
batched messages a fake forwarder moves into the source, as a plain
producer's messages are forwarded on Redis.
"""

from collections.abc import Coroutine
from typing import Any

import pytest

from taskiq_batching import BatchedTask, batch_task
from tests.helpers import QueueBroker, Recorder, queue_broker
from tests.unit.worker.fake_source import FakeForwarder, FakeSource, use_source


async def preload(broker: QueueBroker, source: FakeSource, task_name: str) -> None:
    """Move what was sent to the main queue into the source (a plugin producer)."""
    while not broker.queue.empty():
        message = broker.queue.get_nowait()
        source.put(task_name, message.message)


def worker_world(
    monkeypatch: pytest.MonkeyPatch,
    source: FakeSource | None = None,
    forward: bool = False,
    forward_error: Exception | None = None,
) -> tuple[FakeSource, QueueBroker, Recorder]:
    """A worker's world: ``source`` (a new one if None) as its transport,
    an in-process queue broker, and a recorder for its batch functions.

    :param forward: batched messages sent to the queue are moved into the
        source, as a plain producer's are forwarded on Redis.
    :param forward_error: what the forwarder raises (``forward`` implied).
    """
    source = FakeSource() if source is None else source
    forwarder = None
    if forward or forward_error is not None:
        forwarder = FakeForwarder(source, forward_error)
    use_source(monkeypatch, source, forwarder)
    return source, queue_broker(), Recorder()


def forwarding_world(
    monkeypatch: pytest.MonkeyPatch, make: type[FakeForwarder] = FakeForwarder
) -> tuple[FakeSource, FakeForwarder, QueueBroker, Recorder]:
    """``worker_world`` with a forwarder of type ``make``, returned (its moves)."""
    source = FakeSource()
    forwarder = make(source)
    use_source(monkeypatch, source, forwarder)
    return source, forwarder, queue_broker(), Recorder()


Recorded = BatchedTask[int, [], Coroutine[Any, Any, None]]


def recorded(broker: QueueBroker, seen: Recorder, batch_size: int) -> Recorded:
    """The batched task ``batched`` (timeout an hour): its batches go to ``seen``."""

    async def batched(items: list[int]) -> None:
        seen.record(items)

    return batch_task(broker, batch_size=batch_size, batch_timeout=3600)(batched)


async def preloaded(
    broker: QueueBroker, source: FakeSource, task: Recorded, count: int
) -> None:
    """``count`` items sent as a plugin producer sends them: waiting in ``source``."""
    for item in range(count):
        await task.kiq(item)
    await preload(broker, source, task.task_name)
