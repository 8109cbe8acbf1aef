import math
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_batching import (
    DEFAULT_BATCH_SIZE,
    BatchConfig,
    BatchConfigError,
    BatchingError,
    BatchingMiddleware,
    batch_task,
    parse_batch_labels,
)
from taskiq_batching.errors import MiddlewareMissingError
from tests.helpers import memory_broker


def test_both_settings() -> None:
    config = parse_batch_labels(
        "t", {"batch": True, "batch_size": 7, "batch_timeout": 2}
    )
    assert config == BatchConfig(batch_size=7, batch_timeout=2.0)
    assert config.max_in_flight == 14


def test_timeout_only_uses_default_size() -> None:
    config = parse_batch_labels("t", {"batch": True, "batch_timeout": 0.5})
    assert config == BatchConfig(batch_size=DEFAULT_BATCH_SIZE, batch_timeout=0.5)


def test_size_only_has_no_timeout() -> None:
    config = parse_batch_labels("t", {"batch": True, "batch_size": 3})
    assert config.batch_timeout is None


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"batch": True}, "needs batch_size"),
        ({"batch": True, "batch_size": 0}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_size": -3}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_size": 2.5}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_size": "10"}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_size": True}, "batch_size must be an int >= 1"),
        ({"batch": True, "batch_timeout": 0}, "batch_timeout must be"),
        ({"batch": True, "batch_timeout": -1}, "batch_timeout must be"),
        ({"batch": True, "batch_timeout": math.inf}, "batch_timeout must be"),
        ({"batch": True, "batch_timeout": math.nan}, "batch_timeout must be"),
        ({"batch": True, "batch_timeout": "3"}, "batch_timeout must be"),
        (
            {"batch": True, "batch_size": 5, "batch_sise": 5},
            "unknown label(s) batch_sise",
        ),
        ({"batch_size": 5}, "need batch=True"),
        ({"batch": False, "batch_size": 5}, "need batch=True"),
        ({"batch": "yes", "batch_size": 5}, "need batch=True"),
    ],
)
def test_invalid_labels(labels: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BatchConfigError) as info:
        parse_batch_labels("my_task", labels)
    assert fragment in str(info.value)
    assert "'my_task'" in str(info.value)
    assert isinstance(info.value, BatchingError)


@pytest.mark.parametrize(
    "labels",
    [
        {"batch": True},
        {"batch": True, "batch_size": 0},
        {"batch": True, "batch_timeout": -1},
        {"batch": True, "batch_size": 5, "batch_colour": "red"},
        {"batch_size": 5},
    ],
)
def test_decorator_fails_at_registration(labels: dict[str, Any]) -> None:
    broker = memory_broker()

    with pytest.raises(BatchConfigError):

        @broker.task(**labels)  # type: ignore[untyped-decorator]
        async def handler(items: list[int]) -> None: ...

    assert not any(name.endswith(":handler") for name in broker.local_task_registry)


def test_first_parameter_must_be_a_list() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match=r"annotated .*int.* list\[T\]"):

        @broker.task(batch=True, batch_size=2)
        async def handler(item: int) -> None: ...

    with pytest.raises(BatchConfigError, match="first parameter must be"):

        @broker.task(batch=True, batch_size=2)
        async def no_params() -> None: ...

    with pytest.raises(BatchConfigError, match="first parameter must be"):

        @broker.task(batch=True, batch_size=2)
        async def keyword_only(*, items: list[int]) -> None: ...


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


def test_timeout_label_is_checked() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match="timeout label"):

        @broker.task(batch=True, batch_size=2, timeout="soon")
        async def handler(items: list[int]) -> None: ...


def test_typed_decorator_needs_the_middleware() -> None:
    broker = InMemoryBroker()
    with pytest.raises(MiddlewareMissingError, match="BatchingMiddleware"):
        batch_task(broker, batch_size=3)


def test_middleware_added_after_batched_tasks_is_refused() -> None:
    broker = InMemoryBroker()

    @broker.task(batch=True, batch_size=3)
    async def early(items: list[int]) -> None: ...

    with pytest.raises(BatchConfigError, match="before BatchingMiddleware"):
        broker.with_middlewares(BatchingMiddleware())


def test_one_middleware_per_broker() -> None:
    broker = memory_broker()
    with pytest.raises(BatchConfigError, match="already has"):
        broker.with_middlewares(BatchingMiddleware())


def test_finding_the_middleware_of_a_broker() -> None:
    broker = memory_broker()
    assert BatchingMiddleware.of(broker) is broker.middlewares[0]
    with pytest.raises(MiddlewareMissingError, match="InMemoryBroker has no"):
        BatchingMiddleware.of(InMemoryBroker())
