"""Where the plugin meets taskiq: InMemoryBroker's callback, the worker's listen()."""

import asyncio
import logging
import time
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_batching import BatchingError, BatchingMiddleware, batch_task
from tests.helpers import memory_broker, queue_broker

pytestmark = pytest.mark.timeout(30)


async def test_in_memory_shutdown_does_not_wait_for_running_plain_tasks() -> None:
    broker = memory_broker()
    started, release = asyncio.Event(), asyncio.Event()

    @broker.task
    async def slow() -> None:
        started.set()
        await release.wait()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def batched(items: list[int]) -> int:
        return len(items)

    await broker.startup()
    await slow.kiq()
    pending = [await batched.kiq(i) for i in range(3)]
    await started.wait()
    # As without the plugin: shutdown leaves running plain tasks alone; it
    # flushes the buffers and finishes their messages.
    await asyncio.wait_for(broker.shutdown(), timeout=10)
    for task in pending:
        assert (await task.wait_result(timeout=1)).return_value == 3
    release.set()
    await broker.wait_all()


def test_a_module_level_broker_serves_one_event_loop_after_another() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=2, batch_timeout=3600)
    async def batched(items: list[int]) -> int:
        return sum(items)

    async def one_test_loop(first: int) -> list[int]:
        await broker.startup()
        sent = [await batched.kiq(first), await batched.kiq(first + 1)]
        await BatchingMiddleware.of(broker).wait_buffered(0)
        results = [(await t.wait_result(timeout=5)).return_value for t in sent]
        await broker.shutdown()
        return results

    assert asyncio.run(one_test_loop(1)) == [3, 3]
    assert asyncio.run(one_test_loop(10)) == [21, 21]

    async def buffered_in_a_third_loop() -> None:
        await broker.startup()
        await batched.kiq(5)
        await BatchingMiddleware.of(broker).wait_buffered(1, timeout=5)
        await broker.shutdown()

    asyncio.run(buffered_in_a_third_loop())


async def _drain(broker: InMemoryBroker, fails: bool, size: int) -> float:
    @batch_task(broker, task_name=f"batch-{fails}", batch_size=size)
    async def batched(items: list[int]) -> int:
        if fails:
            raise RuntimeError("the database went away")
        return len(items)

    await broker.startup()
    started = time.perf_counter()
    sent = [await batched.kiq(i) for i in range(size)]
    await broker.wait_all()
    took = time.perf_counter() - started
    for task in sent:
        assert (await task.wait_result(timeout=5)).is_err is fails
    await broker.shutdown()
    return took


async def test_a_failed_batch_of_400_costs_about_what_a_success_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = 400
    ok = await _drain(memory_broker(), fails=False, size=size)
    with caplog.at_level(logging.INFO):
        failed = await _drain(memory_broker(), fails=True, size=size)
    worker_side = ("taskiq_batching", "taskiq.receiver")
    lines = [r for r in caplog.records if r.name.startswith(worker_side)]
    # One report of the failed batch, not one (growing) traceback per message.
    errors = [r for r in lines if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "batch of 400" in errors[0].getMessage()
    # Side by side in one run: the failure costs about what a success does
    # (before, 62 s against a fraction of a second).
    assert failed < 5 * ok + 1.0, (failed, ok)


async def test_a_batched_message_reaching_taskiqs_own_callback_fails_clearly() -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=2)
    async def batched(items: list[int]) -> int:
        return len(items)

    # A Receiver that never called listen(): nothing routes the message.
    from taskiq.receiver import Receiver

    task = await batched.kiq(1)
    message = await broker.queue.get()
    await Receiver(broker).callback(message.message)
    error: Any = (await task.wait_result(timeout=5)).error
    assert isinstance(error, BatchingError)
    assert "taskiq worker" in str(error)


async def test_in_memory_shutdown_right_after_kiq_runs_every_batched_message() -> None:
    broker = InMemoryBroker(max_stored_results=-1).with_middlewares(
        BatchingMiddleware()
    )
    ran: list[int] = []

    @batch_task(broker, task_name="late", batch_size=10, batch_timeout=60)
    async def late(items: list[int]) -> None:
        ran.extend(items)

    await broker.startup()
    for n in range(25):
        await late.kiq(n)  # each message's task has not started yet
    await broker.shutdown()
    assert sorted(ran) == list(range(25))
