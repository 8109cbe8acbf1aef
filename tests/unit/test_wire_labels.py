"""Nothing on the wire that the worker knows: a batched task's settings stay home.

The worker reads ``batch`` and the ``batch_*`` settings from its own
registered task; messages and stored results carry only per-message
labels (``batch_deadline``) and taskiq's own.
"""

from collections.abc import Coroutine
from typing import Any

import pytest
from taskiq import BrokerMessage, InMemoryBroker, TaskiqMessage, TaskiqMiddleware
from taskiq.kicker import AsyncKicker

from taskiq_batching import BatchedTask, BatchingMiddleware, batch_task, deadline
from taskiq_batching.labels import TASK_LABELS
from tests.helpers import Recorder

pytestmark = pytest.mark.timeout(30)


class Wire(InMemoryBroker):
    """InMemoryBroker that keeps what it was given to send."""

    def __init__(self) -> None:
        super().__init__(max_stored_results=-1)
        self.sent: list[BrokerMessage] = []

    async def kick(self, message: BrokerMessage) -> None:
        self.sent.append(message)
        await super().kick(message)

    def decoded(self) -> list[TaskiqMessage]:
        return [self.formatter.loads(message.message) for message in self.sent]


class PreSend(TaskiqMiddleware):
    """A middleware that sees each message before it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[TaskiqMessage] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        self.seen.append(message)
        return message


def settings_in(message: BrokerMessage | TaskiqMessage) -> set[str]:
    return set(TASK_LABELS.intersection(message.labels))


def keyed(
    broker: InMemoryBroker, seen: Recorder
) -> BatchedTask[int, [], Coroutine[Any, Any, int]]:
    @batch_task(
        broker,
        task_name="keyed",
        batch_size=2,
        batch_timeout=5,
        batch_key=lambda item: item % 2,
        timeout=7,
    )
    async def task(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    return task


@pytest.mark.parametrize("middleware", [False, True], ids=["fast", "pre_send"])
async def test_no_message_carries_the_task_settings(middleware: bool) -> None:
    broker = Wire().with_middlewares(BatchingMiddleware())
    pre_send = PreSend()
    if middleware:  # kiq_many then builds each TaskiqMessage, as kiq does
        broker.add_middlewares(pre_send)
    task = keyed(broker, Recorder())
    await broker.startup()
    sent = [
        await task.kiq(1),
        await task.kicker().with_labels(owner="me").kiq(3),
        *await task.kiq_many([2, 4]),
    ]
    results = [await one.wait_result(timeout=5) for one in sent]
    await broker.shutdown()

    assert len(broker.sent) == 4
    seen: list[BrokerMessage | TaskiqMessage] = [*broker.sent, *broker.decoded()]
    for message in [*seen, *pre_send.seen]:
        assert settings_in(message) == set()
        assert float(message.labels["timeout"]) == 7  # taskiq's own labels travel
    for message in broker.sent:
        assert b"lambda" not in message.message
        assert b"batch" not in message.message
    assert broker.decoded()[1].labels["owner"] == "me"
    assert [result.return_value for result in results] == [4, 4, 6, 6]
    for result in results:
        assert TASK_LABELS.intersection(result.labels) == set()
        assert float(result.labels["timeout"]) == 7


async def test_a_message_label_still_travels_and_settings_do_not() -> None:
    broker = Wire().with_middlewares(BatchingMiddleware())
    task = keyed(broker, Recorder())
    await broker.startup()
    when = deadline(60)
    kicker = task.kicker().with_labels(batch_deadline=when, batch_size=1, batch=False)
    sent = await kicker.kiq(1)
    await broker.shutdown()  # flushes the lone item

    (message,) = broker.decoded()
    assert float(message.labels["batch_deadline"]) == when
    assert settings_in(message) == set()
    result = await sent.wait_result(timeout=5)
    assert result.return_value == 1
    assert float(result.labels["batch_deadline"]) == when


async def test_a_message_with_settings_from_an_earlier_version_is_batched() -> None:
    broker = Wire().with_middlewares(BatchingMiddleware())
    seen = Recorder()
    task = keyed(broker, seen)
    # What an earlier version sent: every label of the task, a batch_key
    # function as its repr included.
    old: AsyncKicker[Any, Any] = AsyncKicker(
        task_name=task.task_name, broker=broker, labels=dict(task.labels)
    )
    await broker.startup()
    sent = [await old.kiq(item) for item in (1, 2, 3, 4)]
    results = [await one.wait_result(timeout=5) for one in sent]
    await broker.shutdown()

    assert all("batch_key" in message.labels for message in broker.decoded())
    # Grouped by the worker's own batch_key and batch_size, not the message's.
    assert seen.batches == [[1, 3], [2, 4]]
    assert [result.return_value for result in results] == [4, 6, 4, 6]
    for result in results:
        assert TASK_LABELS.intersection(result.labels) == set()
        assert float(result.labels["timeout"]) == 7


def test_the_task_keeps_its_settings() -> None:
    broker = InMemoryBroker().with_middlewares(BatchingMiddleware())
    task = keyed(broker, Recorder())
    labels: dict[str, Any] = task.labels
    assert labels["batch"] is True
    assert labels["batch_size"] == 2
    assert callable(labels["batch_key"])
