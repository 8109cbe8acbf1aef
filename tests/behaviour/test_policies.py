"""Batch policies (keys, cost, minimum size, concurrency, filters...) on every path.

Each batch function returns, for each item, what its batch was: the
flush reason and the items, so a test reads the batches from the results.
Waits are on results and on the batcher's own state, never on sleeps.
"""

import asyncio
import datetime
import logging
from typing import Any

import pytest
from taskiq import AsyncTaskiqTask, SimpleRetryMiddleware, TaskiqDepends

from taskiq_batching import (
    BatchInfo,
    BatchItemError,
    PerItem,
    batch_task,
    deadline,
    per_item,
)
from tests.behaviour.paths import Path, running

pytestmark = pytest.mark.timeout(30)

#: A batch as its items see it: [flush reason, items] (JSON keeps no tuples).
Batch = list[Any]


def batches_of(items: list[Any], batch: BatchInfo) -> PerItem[Batch]:
    """Every item learns its batch: (flush reason, items)."""
    shape = [batch.flush_reason.value, items]
    return per_item([shape] * len(items))


async def outcome(task: AsyncTaskiqTask[Any]) -> Any:
    result = await task.wait_result(timeout=20)
    assert not result.is_err, result.error
    return result.return_value


async def settled(path: Path, count: int, task_name: str) -> None:
    """Wait until ``count`` messages of the task wait in its buffers."""
    await asyncio.wait_for(path.batching.wait_buffered(count, task_name), 20)


async def test_items_with_different_keys_never_share_a_batch(path: Path) -> None:
    @batch_task(path.broker, task_name="keyed", batch_size=2, batch_key="tenant")
    async def keyed(
        items: list[dict[str, Any]], batch: BatchInfo = TaskiqDepends()
    ) -> PerItem[Batch]:
        return batches_of(items, batch)

    sent = [{"tenant": t, "n": n} for n, t in enumerate("abab")]
    async with running(path):
        tasks = [await keyed.kiq(item) for item in sent]
        shapes = [await outcome(task) for task in tasks]
    for item, (reason, items) in zip(sent, shapes, strict=True):
        assert reason == "size"
        assert {i["tenant"] for i in items} == {item["tenant"]}
    assert path.batching.statistics()["keyed"].flushes == {"size": 2}


async def test_a_new_key_past_max_keys_flushes_the_oldest(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @batch_task(
        path.broker,
        task_name="bounded",
        batch_size=10,
        batch_key=lambda item: item % 10,
        batch_max_keys=2,
    )
    async def bounded(items: list[int], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of(items, batch)

    caplog.set_level(logging.INFO, "taskiq_batching")
    async with running(path):
        first = [await bounded.kiq(n) for n in (1, 11, 2)]
        await settled(path, 3, "bounded")  # keys 1 (1, 11) and 2 (2) open
        third = await bounded.kiq(3)
        assert await outcome(first[0]) == ["keys", [1, 11]]
        await settled(path, 2, "bounded")
        path.batching.flush()
        assert await outcome(first[2]) == ["manual", [2]]
        assert await outcome(third) == ["manual", [3]]
    # It bounds what one worker holds open: buffered per worker there.
    assert per_worker(path, caplog, "bounded") == path.waits_in_broker


async def test_a_cost_budget_splits_batches_and_an_oversized_item_runs_alone(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @batch_task(
        path.broker,
        task_name="costly",
        # As many as are sent: where batches wait in the broker, they are
        # taken together, then split by the budget (docs/fleet.md).
        batch_size=5,
        batch_cost=lambda item: item,
        batch_max_cost=10,
    )
    async def costly(items: list[int], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of(items, batch)

    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running(path):
        tasks = [await costly.kiq(n) for n in (4, 4, 3, 15, 6)]
        assert await outcome(tasks[0]) == ["cost", [4, 4]]  # 3 more would be 11
        assert await outcome(tasks[3]) == ["cost", [15]]  # alone
        assert await outcome(tasks[2]) == ["cost", [3]]  # flushed before 15
        await settled(path, 1, "costly")
        path.batching.flush()
        assert await outcome(tasks[4]) == ["manual", [6]]
    assert "costs 15" in caplog.text
    assert "runs alone" in caplog.text


def per_worker(path: Path, caplog: pytest.LogCaptureFixture, task_name: str) -> bool:
    """Whether the worker said it buffers this task alone (``wait_in_broker``)."""
    said = f"{task_name} is batched by each worker alone, not in the broker"
    return said in caplog.text


async def test_a_timer_does_not_flush_below_min_size_until_max_wait(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    @batch_task(
        path.broker,
        task_name="patient",
        batch_size=10,
        batch_timeout=0.05,
        batch_min_size=3,
        batch_max_wait=datetime.timedelta(seconds=60),
    )
    async def patient(items: list[int], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of(items, batch)

    batcher = path.batching.batcher
    assert batcher is not None
    fired = asyncio.Event()
    timer = batcher.rules._timer

    def timer_fired(key: Any) -> None:
        timer(key)
        fired.set()

    monkeypatch.setattr(batcher.rules, "_timer", timer_fired)
    caplog.set_level(logging.INFO, "taskiq_batching")
    async with running(path):
        tasks = [await patient.kiq(n) for n in (1, 2)]
        # Its batch_timeout passes; the timer holds it back.
        await asyncio.wait_for(fired.wait(), 20)
        await settled(path, 2, "patient")
        assert [buffer.overdue for buffer in batcher.buffers.values()] == [True]
        tasks.append(await patient.kiq(3))  # reaches min_size: due at once
        assert [await outcome(task) for task in tasks] == [["timeout", [1, 2, 3]]] * 3
    # batch_min_size is about one worker's buffer: with wait_in_broker the
    # task is buffered per worker, and the worker said so (docs/fleet.md).
    assert per_worker(path, caplog, "patient") == path.waits_in_broker


async def test_max_wait_flushes_a_buffer_below_min_size(path: Path) -> None:
    @batch_task(
        path.broker,
        task_name="bounded_wait",
        batch_size=10,
        batch_timeout=0.02,
        batch_min_size=5,
        batch_max_wait=0.2,
    )
    async def bounded_wait(items: list[int], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of(items, batch)

    async with running(path):
        task = await bounded_wait.kiq(1)
        assert await outcome(task) == ["timeout", [1]]
    stats = path.batching.statistics()["bounded_wait"]
    assert stats.wait_p50 >= 0.2


async def test_batches_of_one_key_never_overlap(path: Path) -> None:
    running_keys: dict[str, int] = {}
    started = {"a": asyncio.Event(), "b": asyncio.Event()}
    overlap: list[str] = []

    @batch_task(
        path.broker,
        task_name="serial_keys",
        batch_size=1,
        batch_concurrency=4,
        batch_key=lambda item: item[0],
        batch_key_concurrency=1,
    )
    async def serial_keys(items: list[str]) -> int:
        key = items[0][0]
        running_keys[key] = running_keys.get(key, 0) + 1
        if running_keys[key] > 1:
            overlap.append(key)
        started[key].set()
        # Each key's first batch waits for the other key's: batches of
        # different keys do run at once.
        await asyncio.wait_for(started["b" if key == "a" else "a"].wait(), 20)
        running_keys[key] -= 1
        return 1

    async with running(path):
        tasks = [await serial_keys.kiq(item) for item in ("a1", "a2", "b1", "b2")]
        for task in tasks:
            assert await outcome(task) == 1
    assert overlap == []


async def test_items_failing_where_are_finished_without_running(path: Path) -> None:
    ran: list[int] = []

    @batch_task(
        path.broker, task_name="even", batch_size=2, batch_where=lambda n: n % 2 == 0
    )
    async def even(items: list[int]) -> int:
        ran.extend(items)
        return len(items)

    async with running(path):
        tasks = [await even.kiq(n) for n in (1, 2, 3, 4)]
        results = [await task.wait_result(timeout=20) for task in tasks]
    assert ran == [2, 4]
    assert [r.return_value for r in results] == [None, 2, None, 2]
    assert [r.labels.get("batch_filtered") for r in results] == [True, None, True, None]
    assert all(not r.is_err for r in results)


async def test_a_deadline_flushes_its_buffer_early(path: Path) -> None:
    @batch_task(path.broker, task_name="urgent", batch_size=100, batch_timeout=60)
    async def urgent(items: list[int], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of(items, batch)

    async with running(path):
        calm = await urgent.kiq(1)
        if not path.waits_in_broker:  # there it waits in Redis, sent in order
            await settled(path, 1, "urgent")
        soon = urgent.kicker().with_labels(batch_deadline=deadline(0.3))
        hurried = await soon.kiq(2)
        assert await outcome(calm) == ["deadline", [1, 2]]
        assert await outcome(hurried) == ["deadline", [1, 2]]
        late = urgent.kicker().with_labels(batch_deadline=deadline(-1))
        assert await outcome(await late.kiq(3)) == ["deadline", [3]]


async def test_statistics_count_batches_items_and_reasons(path: Path) -> None:
    @batch_task(path.broker, task_name="counted", batch_size=3, batch_timeout=60)
    async def counted(items: list[int]) -> int:
        return len(items)

    async with running(path):
        tasks = [await counted.kiq(n) for n in range(7)]
        for task in tasks[:6]:
            assert await outcome(task) == 3
        if path.waits_in_broker:
            # The 7th waits in Redis, not in this worker (docs/fleet.md): the
            # statistics count this worker's buffers, and flush() finds none.
            stats = path.batching.statistics()["counted"]
            assert (stats.batches, stats.items, stats.waiting) == (2, 6, 0)
            assert path.batching.flush() == 0
            assert stats.flushes == {"size": 2}
            return
        await settled(path, 1, "counted")
        stats = path.batching.statistics()["counted"]
        assert (stats.batches, stats.items, stats.waiting) == (2, 6, 1)
        path.batching.flush()
        assert await outcome(tasks[6]) == 1
    stats = path.batching.statistics()["counted"]
    assert stats.flushes == {"size": 2, "manual": 1}
    assert (stats.batches, stats.items, stats.failed) == (3, 7, 0)
    assert stats.average_size == pytest.approx(7 / 3)
    assert stats.fill_ratio == pytest.approx(7 / 9)
    assert 0 <= stats.wait_p50 <= stats.wait_p99


async def test_a_policy_function_failing_on_an_item_fails_only_that_message(
    path: Path,
) -> None:
    def weight(item: int) -> float:
        if item == 2:
            raise KeyError("weight")
        return -1.0 if item == 3 else 1.0

    @batch_task(
        path.broker,
        task_name="weighed",
        batch_size=2,
        batch_cost=weight,
        batch_max_cost=10,
    )
    async def weighed(items: list[int]) -> int:
        return len(items)

    async with running(path):
        tasks = [await weighed.kiq(n) for n in (1, 2, 3, 4)]
        results = [await task.wait_result(timeout=20) for task in tasks]
    assert [r.is_err for r in results] == [False, True, True, False]
    assert [r.return_value for r in results if not r.is_err] == [2, 2]
    assert isinstance(results[1].error, BatchItemError)
    assert "batch_cost failed on its item: KeyError" in str(results[1].error)
    assert isinstance(results[2].error, BatchItemError)
    assert "a cost is a finite number >= 0" in str(results[2].error)


async def test_keyed_batches_keep_isolation_per_item_and_retries(path: Path) -> None:
    path.broker.add_middlewares(SimpleRetryMiddleware(default_retry_count=2))
    calls: list[list[int]] = []
    failed_alone: list[int] = []

    @batch_task(
        path.broker,
        task_name="keyed_retried",
        batch_size=3,
        batch_timeout=0.2,
        batch_key=lambda n: n % 2,
        batch_isolate=True,
        batch_where=lambda n: n > 0,
        retry_on_error=True,
    )
    async def keyed_retried(items: list[int]) -> Any:
        calls.append(list(items))
        if 3 in items and not failed_alone:
            if items == [3]:
                failed_alone.append(3)  # its retry will succeed
            raise RuntimeError("3 fails until it failed alone")
        return per_item(n * 10 for n in items)

    async with running(path):
        sent = [await keyed_retried.kiq(n) for n in (1, 2, 3, 4, 5, 6, 0)]
        results = [await task.wait_result(timeout=20) for task in sent]
    assert [r.return_value for r in results] == [10, 20, 30, 40, 50, 60, None]
    assert all(not r.is_err for r in results)
    # Odd and even items never share a batch; 0 is filtered out.
    odd = [c for c in calls if c[0] % 2]
    assert odd == [[1, 3, 5], [1], [3, 5], [3], [5], [3]]  # bisected, then retried
    assert all(len({n % 2 for n in call}) == 1 for call in calls)


async def test_a_keyed_task_never_piles_up_flushed_batches(path: Path) -> None:
    release = asyncio.Event()

    # Room for 52 messages; but every message flushes a batch of its own.
    @batch_task(
        path.broker,
        task_name="piled",
        batch_size=1,
        batch_key=lambda item: item,
        batch_max_keys=50,
        batch_concurrency=2,
    )
    async def piled(items: list[int]) -> int:
        await release.wait()
        return len(items)

    batcher = path.batching.batcher
    assert batcher is not None
    peak = 0
    queue = batcher.runner.queue

    def queued(buffer: Any, reason: Any) -> None:
        nonlocal peak
        queue(buffer, reason)
        peak = max(peak, batcher.runner.backlog["piled"])

    batcher.runner.queue = queued  # type: ignore[method-assign]
    async with running(path):
        try:
            tasks = await piled.kiq_many(range(60))
            while batcher.runner.backlog["piled"] < 2:
                await batcher.changed()
            # 2 batches run, 2 wait: the worker stops taking the task.
            assert batcher.running["piled"] == 2
            assert peak <= 2, peak
        finally:
            release.set()
        assert [await outcome(task) for task in tasks] == [1] * 60
    assert peak <= 2, peak


async def test_a_byte_budget_splits_batches_and_an_oversized_message_runs_alone(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @batch_task(
        path.broker,
        task_name="sized",
        batch_size=4,  # as many as are sent (see the cost budget's test)
        batch_max_bytes=5_000,
        batch_concurrency=4,  # holds up to 25,000 bytes: no pressure here
    )
    async def sized(items: list[str], batch: BatchInfo = TaskiqDepends()) -> Any:
        return batches_of([len(item) for item in items], batch)

    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running(path):
        # Each message is its item plus some hundreds of bytes of envelope.
        tasks = [await sized.kiq("x" * n) for n in (2_000, 2_000, 2_000, 9_000)]
        assert await outcome(tasks[0]) == ["bytes", [2_000, 2_000]]  # 3 > 5,000
        assert await outcome(tasks[3]) == ["bytes", [9_000]]  # alone
        assert await outcome(tasks[2]) == ["bytes", [2_000]]  # flushed before it
    assert "over batch_max_bytes 5000: it runs alone" in caplog.text
