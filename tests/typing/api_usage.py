"""Checked by mypy (``mypy --strict``): the typed API as a user writes it.

Never run; ``tests/test_typing.py`` also feeds mypy the misuses that
must be rejected.
"""

from collections.abc import Coroutine
from typing import Any, Concatenate

from taskiq import AsyncTaskiqTask, InMemoryBroker, TaskiqResult
from taskiq.kicker import AsyncKicker
from typing_extensions import assert_type

from taskiq_batching import (
    AnyFailed,
    BatchedTask,
    BatchingMiddleware,
    NotFinished,
    NotSent,
    PerItem,
    RateExceeded,
    TaskStatistics,
    batch_task,
    deadline,
    per_item,
)

broker = InMemoryBroker().with_middlewares(BatchingMiddleware())


@batch_task(broker, batch_size=100, batch_timeout=3)
async def insert_rows(rows: list[int]) -> int:
    return len(rows)


@batch_task(broker, batch_size=10)
def tag(names: list[str], tenant: str, *, weight: float = 1.0) -> list[str]:
    return [f"{tenant}:{name}" for name in names]


@batch_task(broker, batch_size=10, batch_isolate=True)
async def lookup(keys: list[str]) -> PerItem[int]:
    return per_item(len(key) for key in keys)


async def usage() -> None:
    assert_type(insert_rows, BatchedTask[int, [], Coroutine[Any, Any, int]])
    task = await insert_rows.kiq(5)
    assert_type(task, AsyncTaskiqTask[int])
    result = await task.wait_result()
    assert_type(result, TaskiqResult[int])
    assert_type(await tag.kiq("a", "tenant-1"), AsyncTaskiqTask[list[str]])
    assert_type(await tag.kiq("a", tenant="t", weight=2.0), AsyncTaskiqTask[list[str]])
    assert_type(tag(["a"], "t"), list[str])
    assert_type(await lookup.kiq("key"), AsyncTaskiqTask[int])
    assert_type(await lookup.kiq_many(["a", "b"]), list[AsyncTaskiqTask[int]])
    assert_type(await insert_rows.kiq_many(range(3)), list[AsyncTaskiqTask[int]])
    assert_type(await tag.kiq_many(["a"], "t"), list[AsyncTaskiqTask[list[str]]])
    kicker = insert_rows.kicker()
    assert_type(kicker, AsyncKicker[Concatenate[int, []], Coroutine[Any, Any, int]])
    mapped = await insert_rows.map(range(10), chunk_size=5, kill_switch=AnyFailed())
    assert_type(mapped, list[TaskiqResult[Any] | NotSent | NotFinished])
    again = [e.index for e in mapped if isinstance(e, (NotSent, NotFinished))]
    assert_type(again, list[int])
    late = [e.task_id for e in mapped if isinstance(e, NotFinished)]
    assert_type(late, list[str])
    switch = RateExceeded(0.1, min_count=20)
    assert_type(
        await tag.map(["a"], kill_switch=switch, args=("t",)),
        list[TaskiqResult[Any] | NotSent | NotFinished],
    )
    assert_type(deadline(5), float)
    stats = BatchingMiddleware.of(broker).statistics()
    assert_type(stats, dict[str, TaskStatistics])
    assert_type(stats["insert_rows"].wait_p99, float)


@batch_task(
    broker,
    batch_size=10,
    batch_timeout=1,
    batch_key="tenant",
    batch_max_keys=100,
    batch_cost=len,
    batch_max_cost=1000,
    batch_min_size=2,
    batch_max_wait=5,
    batch_where=lambda text: bool(text),
)
async def keyed(texts: list[str]) -> None: ...


# batch_where, like batch_key and batch_cost, takes the name of a field.
@batch_task(broker, batch_size=10, batch_where="indexable")
async def filtered(docs: list[dict[str, bool]]) -> None: ...


async def keyed_usage() -> None:
    assert_type(await keyed.kiq("text"), AsyncTaskiqTask[None])
