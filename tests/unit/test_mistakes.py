"""No silent mistakes: each gets a named error that says what to do, before sending.

A missing metrics library, ``map`` without a result backend, a ``kill_switch``
that is not one, and ``kiq`` given a list of items where one item is expected.
"""

import importlib
import pickle
import sys
from typing import Any

import pytest
from pydantic import BaseModel
from taskiq import InMemoryBroker, TaskiqResult
from taskiq.result_backends.dummy import DummyResultBackend
from taskiq.serializers import JSONSerializer, MSGPackSerializer

from taskiq_batching import (
    AnyFailed,
    BatchConfigError,
    BatchingError,
    KillSwitchTypeError,
    ListSentAsItemError,
    MissingDependencyError,
    ResultBackendMissingError,
    batch_task,
    per_item,
)
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


class Row(BaseModel):
    id: int


def count_kicks(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message the broker is asked to send, from now on."""
    kicked: list[Any] = []
    kick = broker.kick

    async def spy(message: Any) -> None:
        kicked.append(message)
        await kick(message)

    monkeypatch.setattr(broker, "kick", spy)
    return kicked


# --- a missing optional library ----------------------------------------------


def test_prometheus_metrics_without_prometheus_client_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskiq_batching.metrics import PrometheusBatchMetrics

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # not installed
    with pytest.raises(MissingDependencyError) as raised:
        PrometheusBatchMetrics()
    assert 'pip install "taskiq-batching[metrics]"' in str(raised.value)
    assert "PrometheusBatchMetrics needs prometheus_client" in str(raised.value)
    assert isinstance(raised.value, ImportError)
    assert raised.value.name == "prometheus_client"


def test_opentelemetry_metrics_without_opentelemetry_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The module is imported afresh with opentelemetry missing: importing it
    # works, making the exporter says what to install.
    name = "taskiq_batching.metrics.opentelemetry"
    importlib.import_module(name)  # so that the one imported before comes back
    monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    module = importlib.import_module(name)
    with pytest.raises(MissingDependencyError) as raised:
        module.OpenTelemetryBatchMetrics()
    assert 'pip install "taskiq-batching[opentelemetry]"' in str(raised.value)
    assert raised.value.name == "opentelemetry"


# --- map on a broker that keeps no results -------------------------------------


async def test_map_without_a_result_backend_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = memory_broker().with_result_backend(DummyResultBackend())
    kicked = count_kicks(broker, monkeypatch)

    @batch_task(broker, task_name="mapped", batch_size=5, batch_timeout=0.01)
    async def mapped(items: list[int]) -> Any:
        return per_item(items)

    @broker.task(task_name="plain_map", batch=True, batch_size=5, batch_timeout=0.01)
    async def plain_map(items: list[int]) -> Any:
        return per_item(items)

    await broker.startup()
    with pytest.raises(ResultBackendMissingError) as raised:
        await mapped.map(range(10), chunk_size=5, kill_switch=AnyFailed())
    with pytest.raises(ResultBackendMissingError):
        await plain_map.map(range(10))  # type: ignore[attr-defined]
    await broker.shutdown()
    assert kicked == []
    text = str(raised.value)
    assert "map of task 'mapped'" in text
    assert "InMemoryBroker has no result backend" in text
    assert "with_result_backend" in text


# --- a kill switch that is not one -------------------------------------------


class Tripping:
    """A kill switch of the user's own: any object with ``tripped``."""

    def tripped(self, results: Any) -> str | None:
        return "always" if results else None


@pytest.mark.parametrize(
    ("switch", "shown"),
    [
        ("any", "'any' (str)"),
        (AnyFailed, "the class AnyFailed (give an instance: AnyFailed(...))"),
        (3, "3 (int)"),
        (lambda results: None, "(function)"),
    ],
)
async def test_a_kill_switch_that_is_not_one_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch, switch: Any, shown: str
) -> None:
    broker = memory_broker()
    kicked = count_kicks(broker, monkeypatch)

    @batch_task(broker, task_name="mapped", batch_size=5, batch_timeout=0.01)
    async def mapped(items: list[int]) -> Any:
        return per_item(items)

    await broker.startup()
    with pytest.raises(KillSwitchTypeError) as raised:
        await mapped.map(range(10), chunk_size=5, kill_switch=switch)
    await broker.shutdown()
    assert kicked == []
    assert isinstance(raised.value, TypeError)
    assert isinstance(raised.value, BatchConfigError)
    text = str(raised.value)
    assert shown in text
    assert "AnyFailed(), CountExceeded(count), RateExceeded(ratio, min_count)" in text


async def test_a_kill_switch_of_the_users_own_is_accepted_but_not_its_class() -> None:
    broker = memory_broker()

    @batch_task(broker, task_name="mapped", batch_size=5, batch_timeout=0.01)
    async def mapped(items: list[int]) -> Any:
        return per_item(items)

    await broker.startup()
    done = await mapped.map(range(10), chunk_size=5, kill_switch=Tripping())
    with pytest.raises(KillSwitchTypeError, match="give an instance: Tripping"):
        await mapped.map(range(10), chunk_size=5, kill_switch=Tripping)  # type: ignore[arg-type]
    await broker.shutdown()
    kinds = [type(entry).__name__ for entry in done]
    assert kinds[5:] == ["NotSent"] * 5
    assert all(isinstance(entry, TaskiqResult) for entry in done[:5])


# --- kiq given a list of items -------------------------------------------------


async def test_kiq_of_a_list_of_items_says_so_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = memory_broker()
    kicked = count_kicks(broker, monkeypatch)

    @batch_task(broker, task_name="typed_rows", batch_size=5, batch_timeout=0.01)
    async def typed_rows(items: list[Row]) -> None:
        raise AssertionError("nothing is sent")

    @broker.task(task_name="plain_rows", batch=True, batch_size=5, batch_timeout=0.01)
    async def plain_rows(items: list[Row], table: str = "t") -> None:
        raise AssertionError("nothing is sent")

    rows = [Row(id=1), Row(id=2)]
    await broker.startup()
    with pytest.raises(ListSentAsItemError) as raised:
        await typed_rows.kiq(rows)  # type: ignore[call-overload]
    with pytest.raises(ListSentAsItemError):
        await plain_rows.kiq(rows)
    with pytest.raises(ListSentAsItemError):
        await plain_rows.kicker().with_labels(x="y").kiq(rows, "other")
    with pytest.raises(ListSentAsItemError):
        await typed_rows.kicker().kiq(({"id": 1},))  # type: ignore[call-overload]
    with pytest.raises(ListSentAsItemError):
        await typed_rows.kiq([])  # type: ignore[call-overload]
    await broker.shutdown()
    assert kicked == []
    assert isinstance(raised.value, TypeError)
    assert str(raised.value) == (
        "batched task 'typed_rows' takes ONE item per message, but kiq was "
        "given a list of 2 item(s): send them with `await task.kiq_many(items)` "
        "(or `await task.map(items)` to wait for their results), or one item "
        "with `await task.kiq(item)`."
    )


async def test_kiq_of_an_item_that_is_itself_a_list_is_sent() -> None:
    broker = memory_broker()

    @batch_task(broker, task_name="pairs", batch_size=3, batch_timeout=0.01)
    async def pairs(items: list[tuple[int, int]]) -> Any:
        return per_item([a + b for a, b in items])

    @batch_task(broker, task_name="lists", batch_size=3, batch_timeout=0.01)
    async def lists(items: list[list[int]]) -> Any:
        return per_item([sum(item) for item in items])

    @batch_task(broker, task_name="untyped", batch_size=3, batch_timeout=0.01)
    async def untyped(items: list[Any]) -> Any:
        return per_item([len(item) for item in items])

    @batch_task(broker, task_name="numbers", batch_size=3, batch_timeout=0.01)
    async def numbers(items: list[int]) -> Any:
        return per_item(items)

    @broker.task(task_name="bare", batch=True, batch_size=3, batch_timeout=0.01)
    async def bare(items):  # type: ignore[no-untyped-def]
        return per_item([len(item) for item in items])

    await broker.startup()
    sent = [
        await pairs.kiq((1, 2)),
        await lists.kiq([1, 2, 3]),
        await lists.kiq([]),
        await untyped.kiq([1, 2]),
        await bare.kiq([1, 2, 3, 4]),
    ]
    got = [(await task.wait_result(timeout=10)).return_value for task in sent]
    # A list whose elements are not items either is a wrong item, not a list
    # of items: the worker rejects it as it rejects any invalid item.
    wrong = await numbers.kiq(["x", "y"])  # type: ignore[call-overload]
    rejected = await wrong.wait_result(timeout=10)
    with pytest.raises(ListSentAsItemError, match="a list of 2 item"):
        await lists.kiq([[1], [2]])  # type: ignore[list-item]  # items, each a list
    await broker.shutdown()
    assert got == [3, 6, 0, 2, 4]
    assert rejected.is_err
    assert not isinstance(rejected.error, ListSentAsItemError)


# --- the errors survive result backends ------------------------------------------

ERRORS: list[tuple[BatchingError, tuple[Any, ...]]] = [
    (MissingDependencyError("X", "mod", "extra"), ("X", "mod", "extra")),
    (ResultBackendMissingError("t", "RedisStreamBroker"), ("t", "RedisStreamBroker")),
    (KillSwitchTypeError("'any' (str)"), ("'any' (str)",)),
    (ListSentAsItemError("t", "list", 2), ("t", "list", 2)),
]


@pytest.mark.parametrize(
    ("error", "args"), ERRORS, ids=[type(e).__name__ for e, _ in ERRORS]
)
def test_the_errors_are_rebuilt_from_their_args(
    error: BatchingError, args: tuple[Any, ...]
) -> None:
    assert error.args == args
    for back in (type(error)(*args), pickle.loads(pickle.dumps(error))):
        assert type(back) is type(error)
        assert back.args == args
        assert str(back) == str(error)
    for coder in (JSONSerializer(), MSGPackSerializer()):
        result: TaskiqResult[None] = TaskiqResult(
            is_err=True, return_value=None, execution_time=0.1, error=error
        )
        data = coder.dumpb(result.model_dump(mode="json"))
        stored: TaskiqResult[None] = TaskiqResult.model_validate(coder.loadb(data))
        assert type(stored.error) is type(error)
        assert str(stored.error) == str(error)
