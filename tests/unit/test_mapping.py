"""``task.map``: chunks, waiting for each chunk, kill switches, input order."""

from typing import Any

import pytest
from taskiq import InMemoryBroker, TaskiqResult

from taskiq_batching import (
    AnyFailed,
    BatchConfigError,
    BatchingMiddleware,
    CountExceeded,
    NotSent,
    RateExceeded,
    batch_task,
    per_item,
)
from taskiq_batching.mapping import KillSwitch

pytestmark = pytest.mark.timeout(20)


def make_broker() -> InMemoryBroker:
    return InMemoryBroker(max_stored_results=-1).with_middlewares(BatchingMiddleware())


def results(done: list[TaskiqResult[Any] | NotSent]) -> list[Any]:
    return [
        entry if isinstance(entry, NotSent) else entry.is_err or entry.return_value
        for entry in done
    ]


async def test_a_failure_in_chunk_2_of_10_leaves_chunks_3_to_10_unsent() -> None:
    broker = make_broker()
    calls: list[list[int]] = []

    @batch_task(broker, task_name="mapped", batch_size=10, batch_timeout=5)
    async def mapped(items: list[int]) -> Any:
        calls.append(items)
        return per_item([ValueError("bad") if n == 13 else n * 2 for n in items])

    await broker.startup()
    done = await mapped.map(range(100), chunk_size=10, kill_switch=AnyFailed())
    await broker.shutdown()
    assert len(done) == 100
    assert [d.return_value for d in done[:10] if not isinstance(d, NotSent)] == [
        n * 2 for n in range(10)
    ]
    chunk_2 = done[10:20]
    assert [not isinstance(d, NotSent) and d.is_err for d in chunk_2] == [
        n == 13 for n in range(10, 20)
    ]
    unsent = done[20:]
    assert all(isinstance(d, NotSent) for d in unsent)
    assert [d.index for d in unsent if isinstance(d, NotSent)] == list(range(20, 100))
    assert "1 item(s) failed" in str(unsent[0])
    assert sorted(n for batch in calls for n in batch) == list(range(20))


@pytest.mark.parametrize(
    ("switch", "sent"),
    [
        (None, 40),
        (CountExceeded(2), 20),  # 3 failures after chunk 2 (>2)
        (CountExceeded(3), 30),  # the 4th, in chunk 3
        (CountExceeded(4), 40),
        (RateExceeded(0.1, min_count=10), 20),  # 3 of 20 = 15%
        (RateExceeded(0.1, min_count=30), 30),  # judged at 30: 4 of 30 = 13%
        (RateExceeded(0.2, min_count=1), 40),
    ],
)
async def test_kill_switches(switch: KillSwitch | None, sent: int) -> None:
    broker = make_broker()
    failing = {11, 12, 15, 25}

    @batch_task(broker, task_name="mapped", batch_size=10, batch_timeout=5)
    async def mapped(items: list[int]) -> Any:
        return per_item([ValueError() if n in failing else n for n in items])

    await broker.startup()
    done = await mapped.map(range(40), chunk_size=10, kill_switch=switch)
    await broker.shutdown()
    assert sum(not isinstance(d, NotSent) for d in done) == sent
    assert all(isinstance(d, NotSent) for d in done[sent:])


async def test_map_of_a_task_declared_with_broker_task_and_extra_arguments() -> None:
    broker = make_broker()

    @broker.task(task_name="scaled", batch=True, batch_size=5, batch_timeout=0.01)
    async def scaled(items: list[int], factor: int) -> Any:
        return per_item([n * factor for n in items])

    await broker.startup()
    done = await scaled.map(range(7), chunk_size=5, kwargs={"factor": 3})  # type: ignore[attr-defined]
    await broker.shutdown()
    assert results(done) == [n * 3 for n in range(7)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CountExceeded(-1), "count must be >= 0"),
        (lambda: CountExceeded(True), "count must be an int"),
        (lambda: RateExceeded(1.5), "ratio must be a number from 0 to 1"),
        (lambda: RateExceeded(0.5, min_count=0), "min_count must be an int >= 1"),
    ],
)
def test_invalid_kill_switches_are_refused(make: Any, message: str) -> None:
    with pytest.raises(BatchConfigError, match=message):
        make()


async def test_an_invalid_chunk_size_is_refused_before_sending() -> None:
    broker = make_broker()

    @batch_task(broker, task_name="mapped", batch_size=5)
    async def mapped(items: list[int]) -> int:
        raise AssertionError("nothing is sent")

    with pytest.raises(BatchConfigError, match="chunk_size must be an int >= 1"):
        await mapped.map([1], chunk_size=0)
