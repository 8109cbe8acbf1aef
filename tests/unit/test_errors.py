"""The plugin's errors reach the producer with their own type and attributes."""

import pickle
from typing import Any

import pytest
from redis.exceptions import ResponseError
from taskiq import TaskiqResult
from taskiq.abc.serializer import TaskiqSerializer
from taskiq.serializers import JSONSerializer, MSGPackSerializer

from taskiq_batching import (
    BatchArgumentError,
    BatchConfigError,
    BatchingError,
    BatchItemError,
    BatchResultError,
    BatchTimeoutError,
    MiddlewareMissingError,
)
from taskiq_batching.error_texts import describe

pytestmark = pytest.mark.timeout(30)

#: (error, constructor arguments, attributes, message)
CASES: list[tuple[BatchingError, tuple[Any, ...], dict[str, Any], str]] = [
    (
        BatchItemError("tasks:insert", "id-1", "item 'x' does not fit items"),
        ("tasks:insert", "id-1", "item 'x' does not fit items"),
        {
            "task_name": "tasks:insert",
            "task_id": "id-1",
            "reason": "item 'x' does not fit items",
        },
        "Message id-1 of batched task 'tasks:insert' was rejected: "
        "item 'x' does not fit items",
    ),
    (
        BatchArgumentError("tasks:insert", "id-2", "got an unexpected keyword 'x'"),
        ("tasks:insert", "id-2", "got an unexpected keyword 'x'"),
        {
            "task_name": "tasks:insert",
            "task_id": "id-2",
            "reason": "got an unexpected keyword 'x'",
        },
        "Message id-2 of batched task 'tasks:insert' was rejected: "
        "got an unexpected keyword 'x'",
    ),
    (
        BatchTimeoutError("tasks:insert", 3, 0.5),
        ("tasks:insert", 3, 0.5),
        {"task_name": "tasks:insert", "size": 3, "timeout": 0.5},
        "Batch of 3 message(s) of task 'tasks:insert' exceeded its timeout of 0.5 s",
    ),
    (
        BatchResultError("tasks:insert", "per_item returned 2 result(s) for 3 item(s)"),
        ("tasks:insert", "per_item returned 2 result(s) for 3 item(s)"),
        {
            "task_name": "tasks:insert",
            "reason": "per_item returned 2 result(s) for 3 item(s)",
        },
        "Batch of task 'tasks:insert': per_item returned 2 result(s) for 3 item(s)",
    ),
]
IDS = [type(case[0]).__name__ for case in CASES]
SERIALIZERS: dict[str, TaskiqSerializer] = {
    "json": JSONSerializer(),
    "msgpack": MSGPackSerializer(),
}


def same_error(
    got: BaseException | None, error: BatchingError, attributes: Any
) -> None:
    assert type(got) is type(error)
    assert got.args == error.args
    assert str(got) == str(error)
    for name, value in attributes.items():
        assert getattr(got, name) == value, name


@pytest.mark.parametrize(("error", "args", "attributes", "message"), CASES, ids=IDS)
def test_args_are_the_constructor_arguments_and_str_is_readable(
    error: BatchingError, args: tuple[Any, ...], attributes: Any, message: str
) -> None:
    assert error.args == args
    assert str(error) == message
    for name, value in attributes.items():
        assert getattr(error, name) == value
    assert isinstance(error, BatchingError)
    same_error(type(error)(*args), error, attributes)


def test_error_types_are_the_builtin_kinds_they_are() -> None:
    assert isinstance(BatchItemError("t", "i", "r"), ValueError)
    assert isinstance(BatchTimeoutError("t", 1, 1.0), TimeoutError)
    assert isinstance(BatchConfigError("x"), ValueError)
    assert issubclass(MiddlewareMissingError, BatchConfigError)


@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
@pytest.mark.parametrize(("error", "args", "attributes", "message"), CASES, ids=IDS)
def test_a_stored_error_is_read_back_with_its_type_and_attributes(
    serializer: str,
    error: BatchingError,
    args: tuple[Any, ...],
    attributes: Any,
    message: str,
) -> None:
    coder = SERIALIZERS[serializer]
    result: TaskiqResult[None] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.1, error=error
    )
    data = coder.dumpb(result.model_dump(mode="json"))
    assert isinstance(data, bytes)
    back: TaskiqResult[None] = TaskiqResult.model_validate(coder.loadb(data))
    assert isinstance(back.error, type(error))
    same_error(back.error, error, attributes)
    assert str(back.error) == message
    with pytest.raises(type(error)):
        back.raise_for_error()


@pytest.mark.parametrize(("error", "args", "attributes", "message"), CASES, ids=IDS)
def test_errors_survive_pickle(
    error: BatchingError, args: tuple[Any, ...], attributes: Any, message: str
) -> None:
    same_error(pickle.loads(pickle.dumps(error)), error, attributes)
    result: TaskiqResult[None] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.1, error=error
    )
    back = pickle.loads(pickle.dumps(result))
    same_error(back.error, error, attributes)


def test_a_timeout_given_as_an_int_is_formatted_and_kept() -> None:
    error = BatchTimeoutError("t", 2, 5)
    assert str(error) == "Batch of 2 message(s) of task 't' exceeded its timeout of 5 s"
    assert error.args == ("t", 2, 5)


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (
            ResponseError("NOGROUP No such key 's' or consumer group 'g'"),
            "ResponseError: NOGROUP No such key 's' or consumer group 'g'",
        ),
        (ValueError("bad value"), "ValueError: bad value"),
        (ConnectionError(), "ConnectionError"),
        (
            BatchTimeoutError("t", 1, 2.0),
            "BatchTimeoutError: Batch of 1 message(s) "
            "of task 't' exceeded its timeout of 2 s",
        ),
    ],
)
def test_describe_shows_the_type_and_the_text(
    error: BaseException, described: str
) -> None:
    assert describe(error) == described


def test_describe_shows_what_a_hiding_repr_hides() -> None:
    error = ResponseError("NOGROUP No such key")
    assert "NOGROUP" in describe(error)
    assert describe(error).startswith("ResponseError")
