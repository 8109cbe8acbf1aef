"""Per-item results: ``per_item``, the type of one message's result, and ``split``."""

from collections.abc import Coroutine
from typing import Any

import fakeredis
import pytest
from pydantic import BaseModel
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import BatchResultError, PerItem, batch_task, per_item
from taskiq_batching.core.call import Outcome, split
from taskiq_batching.results import item_result_type
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


class Row(BaseModel):
    id: int
    name: str


def test_per_item_takes_any_iterable_once() -> None:
    error = ValueError("bad")
    made = per_item(x for x in [1, error, 3])
    assert made == PerItem([1, error, 3])
    assert isinstance(made.values, list)


@pytest.mark.parametrize(
    ("return_type", "expected"),
    [
        (PerItem[int], int),
        (PerItem[Row], Row),
        (PerItem[list[int]], list[int]),
        (PerItem, None),
        (int, int),
        (list[int], list[int]),
        (None, None),
    ],
)
def test_item_result_type(return_type: Any, expected: Any) -> None:
    assert item_result_type(return_type) == expected


def test_split_shares_one_value() -> None:
    outcomes = split("t", 5, 3)
    assert outcomes == [Outcome(5)] * 3


def test_split_per_item_values_and_errors() -> None:
    error = ValueError("bad")
    outcomes = split("t", per_item([1, error, None]), 3)
    assert outcomes == [Outcome(1), Outcome(error=error), Outcome(None)]


def test_split_an_exception_class_is_a_value_not_an_error() -> None:
    # Only exception instances fail an item.
    outcomes = split("t", per_item([ValueError]), 1)
    assert outcomes == [Outcome(ValueError)]


@pytest.mark.parametrize("length", [0, 2, 4])
def test_split_wrong_length_fails_every_item(length: int) -> None:
    outcomes = split("tasks:insert", PerItem(list(range(length))), 3)
    assert len(outcomes) == 3
    errors = {id(outcome.error) for outcome in outcomes}
    assert len(errors) == 1
    error = outcomes[0].error
    assert isinstance(error, BatchResultError)
    assert error.task_name == "tasks:insert"
    assert str(error) == (
        f"Batch of task 'tasks:insert': per_item returned {length} result(s) "
        "for 3 item(s)"
    )
    assert all(outcome.value is None for outcome in outcomes)


def test_a_batched_tasks_message_result_type_is_the_item_result() -> None:
    broker = memory_broker()

    @broker.task(batch=True, batch_size=2)
    async def rows(items: list[int]) -> PerItem[Row]:
        return per_item(Row(id=i, name="r") for i in items)

    @broker.task(batch=True, batch_size=2)
    async def shared(items: list[int]) -> int:
        return len(items)

    @broker.task
    async def plain(item: int) -> PerItem[int]:
        return per_item([item])

    returned: list[Any] = [rows.return_type, shared.return_type, plain.return_type]
    assert returned == [Row, int, PerItem[int]]  # a plain task is taskiq's own


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


async def test_a_stored_per_item_result_is_read_back_as_the_item_type() -> None:
    server = fakeredis.FakeServer()
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        "redis://fake:6379/0",
        connection_class=fakeredis.FakeAsyncRedisConnection,
        server=server,
    )
    broker = memory_broker().with_result_backend(backend)

    @batch_task(broker, batch_size=2)
    async def rows(items: list[int]) -> PerItem[Row]:
        return per_item(Row(id=i, name=f"r{i}") for i in items)

    await broker.startup()
    sent = [await rows.kiq(i) for i in (1, 2)]
    await broker.wait_all()
    results = [await task.wait_result(timeout=5) for task in sent]
    assert [r.return_value for r in results] == [
        Row(id=1, name="r1"),
        Row(id=2, name="r2"),
    ]
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
        error = (await task.wait_result(timeout=1)).error
        assert isinstance(error, BatchResultError)
        assert "per_item returned 2 result(s) for 3 item(s)" in str(error)
    await broker.shutdown()


def test_a_coroutine_return_type_is_not_a_per_item_type() -> None:
    assert item_result_type(Coroutine[Any, Any, int]) == Coroutine[Any, Any, int]
