"""Flush rules and per-message outcomes, on InMemoryBroker."""

import asyncio

from taskiq import TaskiqDepends

from taskiq_batching import (
    BatchInfo,
    BatchingMiddleware,
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


async def test_a_keyed_task_fills_a_batch_per_key_and_its_backlog_stays_bounded() -> (
    None
):
    broker = memory_broker()
    release = asyncio.Event()
    backlog: list[int] = []
    batches: list[list[int]] = []

    @batch_task(
        broker,
        task_name="keyed",
        batch_size=10,
        batch_key=lambda n: n % 5,
        batch_max_keys=5,
    )
    async def keyed(items: list[int]) -> None:
        batcher = BatchingMiddleware.of(broker).batcher
        assert batcher is not None
        backlog.append(batcher.runner.backlog["keyed"])
        batches.append(items)
        await release.wait()

    await broker.startup()
    sent = [await keyed.kiq(n) for n in range(200)]
    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    # Keys 0 and 1 fill first (items 45 and 46): one batch runs
    # (batch_concurrency=1), one waits; then the task takes nothing more,
    # although its key bound would let it hold 60.
    bounds = batcher.bounds
    for _ in range(100_000):  # until every sender is admitted or waits to be
        if bounds.admitting and bounds.admitting == bounds.incoming:
            break
        await asyncio.sleep(0)
    assert batcher.held["keyed"] + batcher.bounds.incoming == 200
    assert batcher.held["keyed"] == 47
    assert batcher.buffered("keyed") == 27
    assert batcher.runner.backlog["keyed"] == 1
    release.set()
    await broker.wait_all()
    await broker.shutdown()
    assert len(sent) == 200
    assert [len(batch) for batch in batches] == [10] * 20  # every batch full
    assert all({n % 5 for n in batch} == {batch[0] % 5} for batch in batches)
    assert max(backlog) <= 1


async def test_the_bytes_held_of_a_task_are_bounded() -> None:
    broker = memory_broker()
    release = asyncio.Event()

    @batch_task(broker, batch_size=100, batch_max_bytes=10_000, task_name="sized")
    async def sized(items: list[str]) -> None:
        await release.wait()

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    bound = batcher.specs["sized"].settings.max_held_bytes
    assert bound == 20_000  # (batch_concurrency + 1) x batch_max_bytes
    await broker.startup()
    try:
        await sized.kiq("x" * 1_000)
        await sized.kiq("y" * 1_000)
        await batcher.wait_buffered(2, "sized")
        held = batcher.held_bytes["sized"]
        assert 2_000 < held < 10_000
        assert batcher.bounds.fits_bytes("sized", bound - held)
        assert not batcher.bounds.fits_bytes("sized", bound - held + 1)
        # A message bigger than the bound: refused while others are held...
        assert not batcher.bounds.fits_bytes("sized", 10 * bound)
    finally:
        release.set()
        await broker.wait_all()
    await broker.wait_all()
    assert batcher.held_bytes["sized"] == 0
    # ...taken alone when nothing else of the task is held.
    assert batcher.bounds.fits_bytes("sized", 10 * bound)
    await broker.shutdown()
