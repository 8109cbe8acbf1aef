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
    BatchedTask,
    BatchingMiddleware,
    PerItem,
    batch_task,
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
