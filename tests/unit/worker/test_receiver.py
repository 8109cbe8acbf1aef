"""``BatchingReceiver``: the Receiver hands itself to the plugin, no frame lookup."""

import asyncio
import logging

import pytest
from taskiq.receiver import Receiver

from taskiq_batching import BatchingReceiver, batch_task
from taskiq_batching.worker import hook
from tests.helpers import QueueBroker, Recorder, queue_broker

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def no_frame_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback finds no Receiver: only the hand-off can."""
    monkeypatch.setattr(hook, "calling_receiver", lambda: None)


@pytest.mark.usefixtures("no_frame_lookup")
async def test_batches_run_and_plain_tasks_are_untouched() -> None:
    broker = queue_broker()
    seen = Recorder()
    plain_ran = asyncio.Event()

    @broker.task
    async def plain(x: int) -> int:
        plain_ran.set()
        return x * 2

    @batch_task(broker, batch_size=3, batch_timeout=3600)
    async def batched(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    sent = [await batched.kiq(i) for i in range(3)]
    single = await plain.kiq(21)
    finish = asyncio.Event()
    listening = asyncio.create_task(BatchingReceiver(broker).listen(finish))
    results = [(await t.wait_result(timeout=10)).return_value for t in sent]
    assert (await single.wait_result(timeout=10)).return_value == 42
    finish.set()
    await asyncio.wait_for(listening, 10)
    await broker.shutdown()
    assert seen.batches == [[0, 1, 2]]
    assert results == [3, 3, 3]
    assert plain_ran.is_set()


@pytest.mark.usefixtures("no_frame_lookup")
async def test_the_workers_options_are_read_from_the_receiver_itself() -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=3600)
    async def batched(items: list[int]) -> None:
        seen.record(items)

    for i in range(10):
        await batched.kiq(i)
    # --max-tasks-per-child 4: known to the plugin only through the receiver.
    receiver = BatchingReceiver(broker, max_tasks_to_execute=4)
    await asyncio.wait_for(receiver.listen(asyncio.Event()), 10)
    assert seen.batches == [[0, 1, 2, 3]]
    assert broker.queue.qsize() == 6


async def test_the_hand_off_is_for_the_receivers_own_broker_only() -> None:
    mine, other = queue_broker(), queue_broker()
    assert isinstance(mine, QueueBroker)
    receiver = BatchingReceiver(mine)
    with hook.listening_receiver(receiver):
        assert hook.handed_receiver(mine) is receiver
        assert hook.handed_receiver(other) is None
    assert hook.handed_receiver(mine) is None


async def test_a_broker_without_the_middleware_is_told_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = QueueBroker()
    finish = asyncio.Event()
    finish.set()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(BatchingReceiver(broker).listen(finish), 10)
    assert "has no BatchingMiddleware: nothing is batched" in caplog.text


def test_it_is_a_receiver_for_taskiq_worker() -> None:
    # ``taskiq worker --receiver`` accepts subclasses of Receiver only.
    assert issubclass(BatchingReceiver, Receiver)
