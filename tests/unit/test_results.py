"""Per-item results and failures."""

from typing import Any

import pytest
from taskiq import SimpleRetryMiddleware

import taskiq_batching
from taskiq_batching import BatchResultError, PerItem, batch_task, per_item
from taskiq_batching.results import Outcome, split
from tests.helpers import Recorder, memory_broker, queue_broker, running_worker

pytestmark = pytest.mark.timeout(30)


def test_public_api_is_sorted() -> None:
    assert taskiq_batching.__all__ == sorted(taskiq_batching.__all__)
    for name in taskiq_batching.__all__:
        assert hasattr(taskiq_batching, name)


def test_split_shared_value() -> None:
    assert split("t", 5, 3) == [Outcome(5)] * 3


def test_split_per_item_values_and_errors() -> None:
    error = ValueError("bad")
    outcomes = split("t", per_item([1, error, 3]), 3)
    assert outcomes == [Outcome(1), Outcome(error=error), Outcome(3)]


def test_split_length_mismatch_fails_every_item() -> None:
    outcomes = split("t", PerItem([1, 2]), 3)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome.error, BatchResultError)
        assert "returned 2 per-item result(s) for 3 item(s)" in str(outcome.error)


async def test_each_task_id_gets_its_own_result() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=4)
    async def double(items: list[int]) -> PerItem[int]:
        return per_item(item * 2 for item in items)

    await broker.startup()
    sent = [await double.kiq(i) for i in range(8)]
    await broker.wait_all()
    values = [(await task.wait_result(timeout=1)).return_value for task in sent]
    assert values == [i * 2 for i in range(8)]
    await broker.shutdown()


async def test_wrong_length_is_a_clear_error_on_every_message() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=3)
    async def short(items: list[int]) -> PerItem[int]:
        return per_item(items[:-1])

    await broker.startup()
    sent = [await short.kiq(i) for i in range(3)]
    await broker.wait_all()
    for task in sent:
        assert isinstance((await task.wait_result(timeout=1)).error, BatchResultError)
    await broker.shutdown()


async def test_only_failed_items_are_retried_and_batched_with_new_traffic() -> None:
    broker = queue_broker().with_middlewares(
        SimpleRetryMiddleware(default_retry_count=3)
    )
    seen = Recorder()
    failed_once: set[int] = set()

    @batch_task(broker, batch_size=4, batch_timeout=0.3, retry_on_error=True)
    async def store(items: list[int]) -> PerItem[str]:
        seen.record(items)
        results: list[Any] = []
        for item in items:
            if item % 3 == 0 and item not in failed_once:
                failed_once.add(item)
                results.append(ConnectionError(f"item {item} hit a deadlock"))
            else:
                results.append(f"stored {item}")
        return per_item(results)

    async with running_worker(broker):
        sent = [await store.kiq(i) for i in range(1, 9)]  # 3 and 6 fail once
        await broker.wait_acked(10)  # 8 first attempts + 2 retries
    calls = [item for batch in seen.batches for item in batch]
    assert sorted(calls) == sorted([*range(1, 9), 3, 6])  # only 3 and 6 ran twice
    for item, task in zip(range(1, 9), sent, strict=True):
        result = await task.wait_result(timeout=1)
        assert not result.is_err
        assert result.return_value == f"stored {item}"
