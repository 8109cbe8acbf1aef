"""Flush rules and per-message outcomes, on InMemoryBroker."""

import asyncio
import threading
from typing import Any

import pytest
from taskiq import Context, TaskiqDepends
from taskiq.kicker import AsyncKicker
from taskiq.state import TaskiqState

from taskiq_batching import (
    BatchInfo,
    BatchingMiddleware,
    BatchItemError,
    BatchTimeoutError,
    batch_task,
)
from tests.helpers import CountingMiddleware, Recorder, memory_broker


async def test_size_then_remainder_on_timeout() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=60, batch_timeout=0.2)
    async def total(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    await broker.startup()
    tasks = [await total.kiq(i) for i in range(400)]
    await broker.wait_all()
    assert seen.sizes == [60] * 6 + [40]
    assert seen.reasons == ["size"] * 6 + ["timeout"]
    assert [item for batch in seen.batches for item in batch] == list(range(400))
    for index, task in enumerate(tasks):
        result = await task.wait_result(timeout=1)
        assert not result.is_err
        assert result.return_value == sum(seen.batches[index // 60])
    await broker.shutdown()


async def test_timeout_counts_from_first_item_not_last() -> None:
    broker = memory_broker()
    seen = Recorder()
    flushed_at: list[float] = []
    loop = asyncio.get_running_loop()

    @batch_task(broker, batch_size=100, batch_timeout=0.5)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        flushed_at.append(loop.time())
        seen.record(items, info)

    await broker.startup()
    first_sent = loop.time()
    await handler.kiq(1)
    # A second item 0.4 s later: a timer reset by it would flush at 0.9 s.
    await asyncio.sleep(0.4)
    await handler.kiq(2)
    await broker.wait_all()
    assert seen.batches == [[1, 2]]
    assert seen.reasons == ["timeout"]
    assert 0.5 <= flushed_at[0] - first_sent < 0.85
    await broker.shutdown()


async def test_shutdown_flushes_without_waiting_for_the_timer() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=3600)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return len(items)

    await broker.startup()
    tasks = [await handler.kiq(i) for i in range(5)]
    await asyncio.wait_for(broker.shutdown(), 5)
    assert seen.batches == [[0, 1, 2, 3, 4]]
    assert seen.reasons == ["shutdown"]
    for task in tasks:
        assert (await task.wait_result(timeout=1)).return_value == 5


async def test_size_only_task_flushes_on_shutdown() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=10)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    await broker.startup()
    for i in range(13):
        await handler.kiq(i)
    await seen.calls.wait()
    assert seen.sizes == [10]
    await asyncio.wait_for(broker.shutdown(), 5)
    assert seen.sizes == [10, 3]


async def test_manual_flush() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=10)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)

    await broker.startup()
    for i in range(3):
        await handler.kiq(i)
    middleware = BatchingMiddleware.of(broker)
    await asyncio.wait_for(middleware.wait_buffered(3), 2)
    assert middleware.buffered() == middleware.buffered(handler.task_name) == 3
    assert middleware.flush() == 1
    await broker.wait_all()
    assert seen.batches == [[0, 1, 2]]
    assert seen.reasons == ["manual"]
    await broker.shutdown()


async def test_await_inplace_returns_promptly_and_batches_concurrent_sends() -> None:
    broker = memory_broker(await_inplace=True)
    seen = Recorder()

    @batch_task(broker, batch_size=50, batch_timeout=3600)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    await broker.startup()
    task = await asyncio.wait_for(handler.kiq(7), 2)
    assert (await task.wait_result(timeout=1)).return_value == 7
    together = await asyncio.wait_for(
        asyncio.gather(*(handler.kiq(i) for i in range(10))),
        2,
    )
    assert seen.batches == [[7], list(range(10))]
    assert seen.reasons == ["inplace", "inplace"]
    for sent in together:
        assert (await sent.wait_result(timeout=1)).return_value == 45
    await broker.shutdown()


async def test_error_is_stored_for_every_message() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=3)
    async def handler(items: list[int]) -> None:
        raise RuntimeError(f"boom on {items}")

    await broker.startup()
    tasks = [await handler.kiq(i) for i in range(3)]
    await broker.wait_all()
    for task in tasks:
        result = await task.wait_result(timeout=1)
        assert result.is_err
        assert isinstance(result.error, RuntimeError)
        assert str(result.error) == "boom on [0, 1, 2]"
    await broker.shutdown()


async def test_middlewares_run_once_per_message() -> None:
    counting = CountingMiddleware()
    broker = memory_broker().with_middlewares(counting)
    fail = {"now": False}

    @batch_task(broker, batch_size=4)
    async def handler(items: list[int]) -> int:
        if fail["now"]:
            raise ValueError("bad batch")
        return len(items)

    await broker.startup()
    ok = [(await handler.kiq(i)).task_id for i in range(4)]
    await broker.wait_all()
    fail["now"] = True
    bad = [(await handler.kiq(i)).task_id for i in range(4)]
    await broker.wait_all()
    counting.assert_once_per_message(ok, bad)
    await broker.shutdown()


async def test_timeout_label_limits_the_batch_call() -> None:
    counting = CountingMiddleware()
    broker = memory_broker().with_middlewares(counting)
    release = asyncio.Event()
    calls = 0

    @batch_task(broker, batch_size=3, timeout=0.2)
    async def slow(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    await broker.startup()
    tasks = [await slow.kiq(i) for i in range(3)]
    await broker.wait_all()
    assert calls == 1
    for task in tasks:
        error = (await task.wait_result(timeout=1)).error
        assert isinstance(error, BatchTimeoutError)
        assert "Batch of 3 message(s)" in str(error)
    assert sorted(counting.calls["on_error"]) == sorted(t.task_id for t in tasks)
    await broker.shutdown()


async def test_sync_function_runs_off_the_event_loop() -> None:
    broker = memory_broker()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @batch_task(broker, batch_size=2)
    def handler(items: list[int]) -> int:
        threads.append(threading.get_ident())
        return sum(items)

    await broker.startup()
    tasks = [await handler.kiq(i) for i in (3, 4)]
    await broker.wait_all()
    assert threads
    assert threads[0] != loop_thread
    assert [(await t.wait_result(timeout=1)).return_value for t in tasks] == [7, 7]
    await broker.shutdown()


async def test_extra_arguments_split_batches() -> None:
    broker = memory_broker()
    calls: list[tuple[list[int], str, int]] = []

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int], tenant: str, weight: int = 1) -> str:
        calls.append((items, tenant, weight))
        return tenant

    await broker.startup()
    sent = [
        await handler.kiq(1, tenant="a"),
        await handler.kiq(2, tenant="b"),
        await handler.kiq(3, "a"),
        await handler.kiq(4, tenant="b"),
        await handler.kiq(5, tenant="a", weight="2"),  # type: ignore[call-overload]
        await handler.kiq(6, tenant="a", weight=2),
    ]
    await broker.wait_all()
    assert sorted(calls) == [([1, 3], "a", 1), ([2, 4], "b", 1), ([5, 6], "a", 2)]
    results = [(await t.wait_result(timeout=1)).return_value for t in sent]
    assert results == ["a", "b", "a", "b", "a", "a"]
    await broker.shutdown()


async def test_items_are_coerced_and_a_bad_item_fails_alone() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=3, batch_timeout=0.2)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    await broker.startup()
    good1 = await handler.kiq("1")  # type: ignore[call-overload]
    bad = await handler.kiq("not a number")  # type: ignore[call-overload]
    good2 = await handler.kiq(2)
    good3 = await handler.kiq(3.0)  # type: ignore[call-overload]
    await broker.wait_all()
    assert seen.batches == [[1, 2, 3]]
    error = (await bad.wait_result(timeout=1)).error
    assert isinstance(error, BatchItemError)
    assert bad.task_id in str(error)
    assert "not a number" in str(error)
    for task in (good1, good2, good3):
        assert (await task.wait_result(timeout=1)).return_value == 6
    await broker.shutdown()


async def test_dependencies_are_resolved_once_per_batch() -> None:
    broker = memory_broker()
    broker.state.greeting = "hi"
    opened: list[str] = []

    async def database() -> Any:
        opened.append("open")
        yield "db"
        opened.append("close")

    seen: dict[str, Any] = {}

    @batch_task(broker, batch_size=3)
    async def handler(
        items: list[int],
        context: Context = TaskiqDepends(),
        state: TaskiqState = TaskiqDepends(),
        db: str = TaskiqDepends(database),
        info: BatchInfo = TaskiqDepends(),
    ) -> None:
        seen.update(
            first_task=context.message.task_id,
            greeting=state.greeting,
            db=db,
            task_ids=info.task_ids,
            size=info.size,
        )

    await broker.startup()
    sent = [await handler.kiq(i) for i in range(3)]
    await broker.wait_all()
    assert seen == {
        "first_task": sent[0].task_id,
        "greeting": "hi",
        "db": "db",
        "task_ids": [t.task_id for t in sent],
        "size": 3,
    }
    assert opened == ["open", "close"]
    await broker.shutdown()


async def test_calling_the_task_directly_calls_the_batch_function() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=3)
    def handler(items: list[int]) -> int:
        return sum(items)

    assert handler([1, 2, 3]) == 6


async def test_plain_tasks_on_the_same_broker_are_untouched() -> None:
    broker = memory_broker()

    @broker.task
    async def plain(a: int, b: int) -> int:
        return a + b

    await broker.startup()
    task = await plain.kiq(2, 3)
    assert (await task.wait_result(timeout=1)).return_value == 5
    assert await plain(1, 1) == 2
    await broker.shutdown()


@pytest.mark.parametrize("args", [(), (1, 2)])
async def test_message_without_an_item_fails_clearly(args: tuple[int, ...]) -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=1)
    async def handler(items: list[int]) -> int:
        return len(items)

    await broker.startup()
    # What a producer that does not use the typed API may send.
    kicker: AsyncKicker[Any, Any] = AsyncKicker(handler.task_name, broker, {})
    task = await kicker.kiq(*args)
    await broker.wait_all()
    result = await task.wait_result(timeout=1)
    if args:
        # A second positional argument with no parameter: taskiq's error.
        assert result.is_err
    else:
        assert isinstance(result.error, BatchItemError)
        assert "no item" in str(result.error)
    await broker.shutdown()
