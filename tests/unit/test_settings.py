"""Batch settings: which tasks are batched, and every setting checked at declaration."""

import datetime
import math
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import InMemoryBroker, TaskiqDepends
from taskiq.acks import AcknowledgeType

from taskiq_batching import (
    BatchConfigError,
    BatchInfo,
    BatchingError,
    BatchingMiddleware,
    MiddlewareMissingError,
    batch_task,
)
from taskiq_batching.labels import SETTING_LABELS, wants_batching
from taskiq_batching.settings import (
    DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_HELD_BYTES,
    BatchSettings,
    parse_settings,
)
from taskiq_batching.validation import seconds, task_ack_type, task_timeout
from tests.helpers import Recorder, memory_broker

pytestmark = pytest.mark.timeout(30)

ACCEPTED_LIST = (
    "batch_concurrency, batch_cost, batch_isolate, batch_key, "
    "batch_key_concurrency, batch_max_bytes, batch_max_cost, batch_max_keys, "
    "batch_max_wait, "
    "batch_min_size, batch_size, batch_timeout, batch_where"
)


# --- which tasks are batched ---------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "batched"),
    [
        ({}, False),
        ({"batch": True}, True),
        ({"batch": False}, False),
        ({"batch": False, "batch_size": 5, "batch_timeout": 1}, False),
        ({"batch_owner": "x", "retry_on_error": True}, False),
        ({"batch": True, "batch_size": 5}, True),
    ],
)
def test_a_task_is_batched_iff_its_batch_label_is_true(
    labels: dict[str, Any], batched: bool
) -> None:
    assert wants_batching("t", labels) is batched


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None, [True]])
def test_the_batch_label_must_be_a_bool(value: Any) -> None:
    with pytest.raises(BatchConfigError) as info:
        wants_batching("my_task", {"batch": value})
    message = str(info.value)
    assert "'my_task'" in message
    assert "batch must be True or False" in message
    assert f"got {value!r}" in message


@pytest.mark.parametrize(
    "given",
    [
        ["batch_size"],
        ["batch_timeout"],
        ["batch_isolate"],
        ["batch_concurrency"],
        ["batch_size", "batch_timeout"],
    ],
)
def test_settings_without_a_batch_label_are_refused_by_name(given: list[str]) -> None:
    with pytest.raises(BatchConfigError) as info:
        wants_batching("my_task", dict.fromkeys(given, 5))
    message = str(info.value)
    assert "'my_task'" in message
    assert ", ".join(sorted(given)) in message
    assert "batch=True" in message
    assert "batch=False" in message


def test_the_documented_setting_labels() -> None:
    assert sorted(SETTING_LABELS) == ACCEPTED_LIST.split(", ")


# --- parsing the settings of a batched task --------------------------------------


def test_size_and_timeout() -> None:
    settings = parse_settings("t", {"batch": True, "batch_size": 7, "batch_timeout": 2})
    assert settings == BatchSettings(batch_size=7, batch_timeout=2.0)
    assert type(settings.batch_timeout) is float
    assert settings.isolate is False
    assert settings.concurrency == DEFAULT_BATCH_CONCURRENCY == 1
    assert settings.max_held == 14


def test_timeout_only_uses_the_default_size() -> None:
    settings = parse_settings("t", {"batch": True, "batch_timeout": 0.5})
    assert settings == BatchSettings(batch_size=DEFAULT_BATCH_SIZE, batch_timeout=0.5)


def test_size_only_has_no_timeout() -> None:
    assert parse_settings("t", {"batch": True, "batch_size": 3}).batch_timeout is None


def test_isolate_and_concurrency() -> None:
    settings = parse_settings(
        "t",
        {
            "batch": True,
            "batch_size": 10,
            "batch_isolate": True,
            "batch_concurrency": 3,
        },
    )
    assert settings.isolate is True
    assert settings.concurrency == 3
    assert settings.max_held == 40  # three running batches and one filling


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime.timedelta(milliseconds=250), 0.25),
        (datetime.timedelta(minutes=2), 120.0),
        (3, 3.0),
        (0.001, 0.001),
    ],
)
def test_durations_accept_numbers_and_timedeltas(value: Any, expected: float) -> None:
    labels = {"batch": True, "batch_timeout": value}
    assert parse_settings("t", labels).batch_timeout == expected
    assert seconds("t", "x", value) == expected


def test_labels_of_other_plugins_are_free_on_a_batched_task() -> None:
    labels = {"batch": True, "batch_size": 2, "retry_on_error": True, "owner": "x"}
    assert parse_settings("t", labels).batch_size == 2


def test_unknown_batch_settings_are_refused_with_the_accepted_list() -> None:
    with pytest.raises(BatchConfigError) as info:
        parse_settings(
            "my_task",
            {"batch": True, "batch_size": 5, "batch_sise": 5, "batch_owner": "x"},
        )
    message = str(info.value)
    assert "'my_task'" in message
    assert "unknown setting(s) batch_owner, batch_sise" in message
    assert ACCEPTED_LIST in message


def test_a_batched_task_needs_a_size_or_a_timeout() -> None:
    with pytest.raises(BatchConfigError) as info:
        parse_settings("my_task", {"batch": True})
    message = str(info.value)
    assert "'my_task'" in message
    assert "batch_size" in message
    assert "batch_timeout" in message


@pytest.mark.parametrize(
    ("setting", "value", "accepted"),
    [
        ("batch_size", 0, "an int >= 1"),
        ("batch_size", -3, "an int >= 1"),
        ("batch_size", 2.5, "an int >= 1"),
        ("batch_size", "10", "an int >= 1"),
        ("batch_size", True, "an int >= 1"),
        ("batch_timeout", 0, "a finite number of seconds > 0 (or a timedelta)"),
        ("batch_timeout", -1, "a finite number of seconds > 0"),
        ("batch_timeout", math.inf, "a finite number of seconds > 0"),
        ("batch_timeout", math.nan, "a finite number of seconds > 0"),
        ("batch_timeout", "3", "a finite number of seconds > 0"),
        ("batch_timeout", True, "a finite number of seconds > 0"),
        ("batch_concurrency", 0, "an int >= 1"),
        ("batch_concurrency", 1.0, "an int >= 1"),
        ("batch_concurrency", False, "an int >= 1"),
        ("batch_isolate", "yes", "True or False"),
        ("batch_isolate", 1, "True or False"),
    ],
)
def test_an_invalid_setting_names_itself_its_value_and_what_is_accepted(
    setting: str, value: Any, accepted: str
) -> None:
    labels = {"batch": True, "batch_size": 4, setting: value}
    with pytest.raises(BatchConfigError) as info:
        parse_settings("my_task", labels)
    message = str(info.value)
    assert isinstance(info.value, BatchingError)
    assert isinstance(info.value, ValueError)
    assert "'my_task'" in message
    assert f"{setting} must be {accepted}" in message
    assert f"got {value!r}" in message


@pytest.mark.parametrize(
    ("value", "shown"),
    [(datetime.timedelta(0), "0.0"), (datetime.timedelta(seconds=-1), "-1.0")],
)
def test_an_invalid_timedelta_is_shown_in_seconds(
    value: datetime.timedelta, shown: str
) -> None:
    with pytest.raises(BatchConfigError, match=f"batch_timeout must be .* got {shown}"):
        parse_settings("t", {"batch": True, "batch_timeout": value})


# --- the timeout and ack_type labels of a batched task -----------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (5, 5.0),
        (0.25, 0.25),
        ("5", 5.0),  # a label that travelled as a string
        (datetime.timedelta(seconds=2), 2.0),
    ],
)
def test_the_timeout_label_in_seconds(value: Any, expected: float | None) -> None:
    labels = {} if value is None else {"timeout": value}
    assert task_timeout("t", labels) == expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("soon", "'soon'"),
        (0, "0"),
        (-1, "-1"),
        ("0", "0.0"),  # a string is read as a number first
        (math.inf, "inf"),
        (True, "True"),
        (datetime.timedelta(0), "0.0"),
    ],
)
def test_an_invalid_timeout_label_is_refused(value: Any, shown: str) -> None:
    with pytest.raises(BatchConfigError) as info:
        task_timeout("my_task", {"timeout": value})
    message = str(info.value)
    assert "'my_task'" in message
    assert "timeout must be a finite number of seconds > 0 (or a timedelta)" in message
    assert message.endswith(f"got {shown}.")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("when_executed", AcknowledgeType.WHEN_EXECUTED),
        ("MANUAL", AcknowledgeType.MANUAL),
        (AcknowledgeType.WHEN_RECEIVED, AcknowledgeType.WHEN_RECEIVED),
    ],
)
def test_the_ack_type_label_as_taskiq_reads_it(
    value: Any, expected: AcknowledgeType | None
) -> None:
    labels = {} if value is None else {"ack_type": value}
    assert task_ack_type("t", labels) == expected


@pytest.mark.parametrize("value", ["sometimes", 3])
def test_an_invalid_ack_type_label_is_refused(value: Any) -> None:
    with pytest.raises(BatchConfigError) as info:
        task_ack_type("my_task", {"ack_type": value})
    message = str(info.value)
    assert "'my_task'" in message
    assert str(value) in message


def test_an_invalid_ack_type_label_names_the_setting_and_what_is_accepted() -> None:
    with pytest.raises(BatchConfigError) as info:
        task_ack_type("my_task", {"ack_type": "sometimes"})
    message = str(info.value)
    assert "ack_type" in message
    assert "sometimes" in message
    for accepted in ("when_received", "when_executed", "when_saved", "manual"):
        assert accepted in message


# --- declaring tasks on a broker with the middleware -------------------------------


def registered(broker: InMemoryBroker, name: str) -> bool:
    return any(key.endswith(f":{name}") for key in broker.local_task_registry)


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"batch": True}, "needs batch_size"),
        ({"batch": True, "batch_size": 0}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_timeout": -1}, "batch_timeout must be"),
        ({"batch": True, "batch_size": 2, "batch_isolate": "yes"}, "batch_isolate"),
        ({"batch": True, "batch_size": 2, "batch_concurrency": 0}, "batch_concurr"),
        ({"batch": True, "batch_size": 5, "batch_colour": "red"}, "unknown setting"),
        ({"batch": True, "batch_size": 2, "timeout": "soon"}, "timeout must be"),
        ({"batch": True, "batch_size": 2, "ack_type": "sometimes"}, "sometimes"),
        ({"batch": "yes", "batch_size": 5}, "batch must be True or False"),
        ({"batch_size": 5}, "need(s) batch=True"),
        ({"batch_timeout": 1, "batch_isolate": True}, "batch_isolate, batch_timeout"),
    ],
)
def test_a_bad_declaration_fails_at_the_decorator(
    labels: dict[str, Any], fragment: str
) -> None:
    broker = memory_broker()

    with pytest.raises(BatchConfigError) as info:

        @broker.task(**labels)  # type: ignore[untyped-decorator]
        async def handler(items: list[int]) -> None: ...

    assert fragment in str(info.value)
    assert not registered(broker, "handler")


def test_batch_false_switches_the_settings_off() -> None:
    broker = memory_broker()

    @broker.task(batch=False, batch_size=5, batch_timeout=1)
    async def plain(item: int) -> int:
        return item

    assert registered(broker, "plain")
    assert BatchingMiddleware.of(broker).batcher is not None
    assert plain.task_name not in BatchingMiddleware.of(broker).batcher.specs  # type: ignore[union-attr]


async def test_other_batch_labels_are_free_on_plain_tasks() -> None:
    broker = memory_broker()

    @broker.task(batch_owner="x", batching="soon")
    async def plain(a: int, b: int) -> int:
        return a + b

    await broker.startup()
    task = await plain.kiq(2, 3)
    await broker.wait_all()
    assert (await task.wait_result(timeout=5)).return_value == 5
    await broker.shutdown()


@pytest.mark.parametrize(
    "timeout", [0.05, datetime.timedelta(milliseconds=50)], ids=["float", "timedelta"]
)
async def test_a_timedelta_timeout_flushes_like_seconds(timeout: Any) -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=timeout)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return len(items)

    spec = BatchingMiddleware.of(broker).batcher.specs[handler.task_name]  # type: ignore[union-attr]
    assert spec.settings.batch_timeout == pytest.approx(0.05)
    await broker.startup()
    task = await handler.kiq(1)
    await seen.calls.wait()
    await broker.wait_all()
    assert (await task.wait_result(timeout=5)).return_value == 1
    assert seen.reasons == ["timeout"]
    await broker.shutdown()


def test_typed_declaration_checks_the_same_settings() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match="batch_size must be an int >= 1"):

        @batch_task(broker, batch_size=0)
        async def zero(items: list[int]) -> None: ...

    with pytest.raises(BatchConfigError, match="needs batch_size"):

        @batch_task(broker)
        async def nothing(items: list[int]) -> None: ...

    with pytest.raises(BatchConfigError, match=r"unknown setting.* batch_colour"):

        @batch_task(broker, batch_size=2, batch_colour="red")
        async def colour(items: list[int]) -> None: ...

    with pytest.raises(BatchConfigError, match="timeout must be"):

        @batch_task(broker, batch_size=2, timeout=-1)
        async def negative(items: list[int]) -> None: ...

    @batch_task(broker, batch_timeout=datetime.timedelta(seconds=1), timeout=3)
    async def fine(items: list[int]) -> None: ...

    assert fine.labels["batch"] is True
    assert fine.labels["batch_timeout"] == datetime.timedelta(seconds=1)
    assert not any(registered(broker, n) for n in ("zero", "nothing", "colour"))


def test_the_first_parameter_must_take_a_list() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match=r"annotated .*int.* list\[T\]"):

        @broker.task(batch=True, batch_size=2)
        async def handler(item: int) -> None: ...

    with pytest.raises(BatchConfigError, match="first parameter must be"):

        @broker.task(batch=True, batch_size=2)
        async def no_params() -> None: ...


def test_accepted_list_annotations() -> None:
    broker = memory_broker()

    @broker.task(batch=True, batch_size=2)
    async def seq(items: Sequence[int]) -> None: ...

    @broker.task(batch=True, batch_size=2)
    async def untyped(items) -> None:  # type: ignore[no-untyped-def]
        ...

    @broker.task(batch=True, batch_size=2)
    async def bare(items: list) -> None:  # type: ignore[type-arg]
        ...

    specs = BatchingMiddleware.of(broker).batcher.specs  # type: ignore[union-attr]
    assert {seq.task_name, untyped.task_name, bare.task_name} <= set(specs)


# --- a broker without the middleware ------------------------------------------------


def test_a_batched_task_without_the_middleware_fails_at_the_decorator() -> None:
    broker = InMemoryBroker()
    with pytest.raises(MiddlewareMissingError) as info:

        @broker.task(batch=True, batch_size=3)
        async def handler(items: list[int]) -> None: ...

    message = str(info.value)
    assert "handler'" in message
    assert "InMemoryBroker has no BatchingMiddleware" in message
    assert ".with_middlewares(BatchingMiddleware())" in message
    assert isinstance(info.value, BatchConfigError)
    assert not registered(broker, "handler")


def test_a_batched_task_without_the_middleware_fails_at_register_task() -> None:
    broker = InMemoryBroker()

    async def handler(items: list[int]) -> None: ...

    with pytest.raises(
        MiddlewareMissingError, match=r"with_middlewares\(BatchingMiddleware\(\)\)"
    ):
        broker.register_task(handler, task_name="handler", batch=True, batch_size=3)
    assert "handler" not in broker.local_task_registry


def test_a_bad_batch_label_without_the_middleware_is_reported_as_such() -> None:
    broker = InMemoryBroker()
    with pytest.raises(MiddlewareMissingError):

        @broker.task(batch=True, batch_size=0)
        async def handler(items: list[int]) -> None: ...


def test_typed_declaration_without_the_middleware_fails() -> None:
    with pytest.raises(MiddlewareMissingError, match="BatchingMiddleware"):
        batch_task(InMemoryBroker(), batch_size=3)


async def test_plain_tasks_on_a_broker_without_the_middleware_are_untouched() -> None:
    broker = InMemoryBroker()

    @broker.task
    async def plain(a: int, b: int) -> int:
        return a + b

    @broker.task(batch=False, batch_size=5, batch_owner="x")
    async def labelled(a: int) -> int:
        return a

    await broker.startup()
    sent = [await plain.kiq(2, 3), await labelled.kiq(4)]
    await broker.wait_all()
    assert [(await t.wait_result(timeout=5)).return_value for t in sent] == [5, 4]
    assert await plain(1, 1) == 2
    await broker.shutdown()


# --- the middleware itself ---------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "4"])
def test_max_concurrent_batches_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(BatchConfigError) as info:
        BatchingMiddleware(max_concurrent_batches=value)
    message = str(info.value)
    assert "max_concurrent_batches must be an int >= 1" in message
    assert f"got {value!r}" in message


@pytest.mark.parametrize("value", [1, 0, "yes", 1.0])
def test_wait_in_broker_must_be_true_false_or_none(value: Any) -> None:
    with pytest.raises(BatchConfigError, match="wait_in_broker must be True"):
        BatchingMiddleware(wait_in_broker=value)


@pytest.mark.parametrize("value", [True, False, None])
def test_wait_in_broker_takes_true_false_and_none(value: bool | None) -> None:
    assert BatchingMiddleware(wait_in_broker=value).wait_in_broker is value


def test_one_middleware_per_broker() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match="already has"):
        broker.with_middlewares(BatchingMiddleware())


def test_a_middleware_serves_one_broker() -> None:
    middleware = BatchingMiddleware()
    InMemoryBroker().with_middlewares(middleware)
    with pytest.raises(BatchConfigError, match="one broker only"):
        InMemoryBroker().with_middlewares(middleware)


def test_finding_the_middleware_of_a_broker() -> None:
    broker = memory_broker()
    assert BatchingMiddleware.of(broker) is broker.middlewares[0]
    with pytest.raises(MiddlewareMissingError, match="InMemoryBroker has no"):
        BatchingMiddleware.of(InMemoryBroker())


# --- batch policies ---------------------------------------------------------------


BASE: dict[str, Any] = {"batch": True, "batch_size": 10, "batch_timeout": 1}


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"batch_key": 3}, ["batch_key", "3", "function of the item"]),
        ({"batch_key": ""}, ["batch_key", "''", "name of one of its fields"]),
        ({"batch_max_keys": 0}, ["batch_max_keys", "0", "int >= 1"]),
        ({"batch_max_keys": 2.5}, ["batch_max_keys", "2.5", "int >= 1"]),
        (
            {"batch_key_concurrency": 2},
            ["batch_key_concurrency", "2", "needs batch_key"],
        ),
        ({"batch_cost": "w"}, ["batch_cost", "'w'", "needs batch_max_cost"]),
        ({"batch_max_cost": 5}, ["batch_max_cost", "5", "needs batch_cost"]),
        (
            {"batch_cost": "w", "batch_max_cost": -1},
            ["batch_max_cost", "-1", "number > 0"],
        ),
        (
            {"batch_cost": "w", "batch_max_cost": math.inf},
            ["batch_max_cost", "inf", "finite number > 0"],
        ),
        ({"batch_min_size": 3}, ["batch_min_size", "3", "needs batch_max_wait"]),
        ({"batch_max_wait": 3}, ["batch_max_wait", "3", "only used with"]),
        (
            {"batch_min_size": 11, "batch_max_wait": 5},
            ["batch_min_size", "11", "<= batch_size=10"],
        ),
        (
            {"batch_min_size": 2, "batch_max_wait": 0.5},
            ["batch_max_wait", "0.5", ">= it"],
        ),
        (
            {"batch_min_size": 0, "batch_max_wait": 5},
            ["batch_min_size", "0", "int >= 1"],
        ),
        ({"batch_where": True}, ["batch_where", "True", "function of the item"]),
        ({"batch_max_bytes": 0}, ["batch_max_bytes", "0", "int >= 1"]),
        ({"batch_max_bytes": 1.5e6}, ["batch_max_bytes", "1500000.0", "int >= 1"]),
        ({"batch_max_bytes": True}, ["batch_max_bytes", "True", "int >= 1"]),
        ({"batch_deadline": 5.0}, ["batch_deadline", "label of one message"]),
    ],
)
def test_invalid_policies_are_refused_at_declaration(
    extra: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(BatchConfigError) as info:
        parse_settings("my_task", {**BASE, **extra})
    message = str(info.value)
    assert "'my_task'" in message
    for name in names:
        assert name in message, message


def test_policies_accept_functions_fields_and_timedeltas() -> None:
    settings = parse_settings(
        "t",
        {
            **BASE,
            "batch_key": "tenant",
            "batch_max_keys": 3,
            "batch_key_concurrency": 1,
            "batch_cost": len,
            "batch_max_cost": 100,
            "batch_min_size": 4,
            "batch_max_wait": datetime.timedelta(milliseconds=1500),
            "batch_where": bool,
        },
    )
    assert settings.key is not None
    assert settings.key({"tenant": "a"}) == "a"
    assert settings.key(type("Row", (), {"tenant": "b"})()) == "b"
    assert settings.cost is len
    assert (settings.max_keys, settings.key_concurrency) == (3, 1)
    assert (settings.max_cost, settings.min_size, settings.max_wait) == (100, 4, 1.5)
    assert settings.where is bool


def test_batch_task_takes_every_policy_as_a_typed_argument() -> None:
    broker = InMemoryBroker().with_middlewares(BatchingMiddleware())

    @batch_task(
        broker,
        task_name="typed",
        batch_size=10,
        batch_timeout=datetime.timedelta(seconds=1),
        batch_key="tenant",
        batch_max_keys=5,
        batch_key_concurrency=2,
        batch_cost="weight",
        batch_max_cost=50.0,
        batch_min_size=2,
        batch_max_wait=datetime.timedelta(seconds=3),
        batch_where=lambda row: row["weight"] > 0,
    )
    async def typed(rows: list[dict[str, Any]]) -> None: ...

    spec = BatchingMiddleware.of(broker).batcher.specs["typed"]  # type: ignore[union-attr]
    assert spec.settings.max_wait == 3.0
    assert spec.settings.max_keys == 5
    declare = batch_task(broker, task_name="bad", batch_size=1, batch_cost="w")
    with pytest.raises(BatchConfigError, match="batch_max_cost"):

        @declare
        async def bad(rows: list[int]) -> None: ...


def test_a_keyed_task_holds_a_filling_buffer_per_key_allowed() -> None:
    plain = parse_settings("t", {**BASE, "batch_concurrency": 2})
    assert plain.max_held == 3 * 10
    keyed = parse_settings("t", {**BASE, "batch_key": "k"})
    assert keyed.max_held == 2 * 10  # without a key bound: one filling buffer
    bounded = parse_settings("t", {**BASE, "batch_key": "k", "batch_max_keys": 50})
    assert bounded.max_held == (1 + 50) * 10


def test_the_bytes_a_task_holds_follow_batch_max_bytes() -> None:
    assert parse_settings("t", BASE).max_held_bytes == DEFAULT_MAX_HELD_BYTES
    sized = parse_settings(
        "t", {**BASE, "batch_concurrency": 2, "batch_max_bytes": 4096}
    )
    assert sized.max_bytes == 4096
    assert sized.max_held_bytes == 3 * 4096
