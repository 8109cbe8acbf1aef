"""What a batch function accepts: its items, extra arguments and dependencies."""

import collections.abc
from collections.abc import MutableSequence, Sequence
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, TypeAdapter
from taskiq import Context, TaskiqDepends
from taskiq.kicker import AsyncKicker

from taskiq_batching import BatchConfigError, BatchInfo, BatchItemError, batch_task
from taskiq_batching.core.analysis import analyse
from taskiq_batching.core.signature import ArgumentError
from tests.helpers import Recorder, memory_broker

pytestmark = pytest.mark.timeout(30)


class Row(BaseModel):
    id: int


# --- analysing a function at declaration -------------------------------------------


async def takes_int(item: int) -> None: ...


async def takes_nothing() -> None: ...


async def keyword_only(*, items: list[int]) -> None: ...


async def star_args(*items: int) -> None: ...


async def takes_dict(items: dict[str, int]) -> None: ...


async def unknown_annotation(items: "list[Missing]") -> None: ...  # type: ignore[name-defined]  # noqa: F821


@pytest.mark.parametrize(
    ("func", "fragment"),
    [
        (takes_int, r"first parameter 'item' is annotated .*int.*list\[T\]"),
        (takes_dict, r"annotated .*dict.*list\[T\]"),
        (takes_nothing, "first parameter must be a positional parameter"),
        (keyword_only, "first parameter must be a positional parameter"),
        (star_args, "first parameter must be a positional parameter"),
        (unknown_annotation, "cannot read its signature"),
    ],
)
def test_a_function_that_cannot_take_a_list_is_refused(
    func: Any, fragment: str
) -> None:
    with pytest.raises(BatchConfigError, match=fragment) as info:
        analyse("my_task", func)
    assert "'my_task'" in str(info.value)


async def untyped(items): ...  # type: ignore[no-untyped-def]


async def bare(items: list) -> None: ...  # type: ignore[type-arg]


async def any_items(items: list[Any]) -> None: ...


async def ints(items: list[int]) -> None: ...


async def seq(items: Sequence[int]) -> None: ...


async def abc_seq(items: collections.abc.Sequence[int]) -> None: ...


async def mutable(items: MutableSequence[int]) -> None: ...


async def annotated(items: Annotated[list[int], "meta"]) -> None: ...


def sync(items: list[int]) -> None: ...


@pytest.mark.parametrize(
    ("func", "typed"),
    [
        (untyped, False),
        (bare, False),
        (any_items, False),
        (ints, True),
        (seq, True),
        (abc_seq, True),
        (mutable, True),
        (annotated, True),
        (sync, True),
    ],
)
def test_accepted_list_annotations(func: Any, typed: bool) -> None:
    signature = analyse("t", func)
    assert signature.items_name == "items"
    assert (signature.item_adapter is not None) is typed
    assert signature.func is func
    assert signature.is_coroutine is (func is not sync)
    assert signature.coerce_item("5") == (5 if typed else "5")


def test_items_are_coerced_as_taskiq_coerces_arguments() -> None:
    async def rows(items: list[Row]) -> None: ...

    signature = analyse("t", rows)
    assert signature.coerce_item({"id": "3"}) == Row(id=3)
    with pytest.raises(ArgumentError) as info:
        signature.coerce_item({"id": "three"})
    message = str(info.value)
    # The field path and the error type; the value only when shown.
    assert message == "item does not fit items: 1 validation error(s): id: int_parsing"
    with pytest.raises(ArgumentError) as info:
        signature.coerce_item({"id": "three"}, values=True)
    assert "item {'id': 'three'} does not fit items" in str(info.value)
    assert "input 'three'" in str(info.value)


def test_a_long_item_is_shortened_in_the_error() -> None:
    signature = analyse("t", ints)
    with pytest.raises(ArgumentError) as info:
        signature.coerce_item("x" * 500, values=True)
    assert "..." in str(info.value)
    assert len(str(info.value)) < 300


async def extras(
    items: list[int],
    tenant: str,
    weight: int = 1,
    /,
    *,
    flag: bool = False,
) -> None: ...


async def named(
    items: list[int], tenant: str, weight: int = 1, note: Any = None
) -> None: ...


def test_positional_extras_are_moved_to_their_names_and_defaults_filled() -> None:
    signature = analyse("t", named)
    by_position = signature.coerce_extras(["a"], {})
    by_name = signature.coerce_extras([], {"tenant": "a"})
    assert by_position == by_name == ([], {"tenant": "a", "weight": 1, "note": None})
    assert signature.coerce_extras(["a", "2"], {}) == (
        [],
        {"tenant": "a", "weight": 2, "note": None},
    )


def test_positional_only_extras_stay_positional() -> None:
    signature = analyse("t", extras)
    assert signature.coerce_extras(["a", "2"], {}) == (["a", 2], {"flag": False})
    assert signature.coerce_extras(["a"], {"flag": "true"}) == (["a"], {"flag": True})


def test_extra_positional_values_are_kept_for_star_args() -> None:
    async def star(items: list[int], first: int, *rest: Any) -> None: ...

    signature = analyse("t", star)
    assert signature.coerce_extras(["1", "x", 2], {}) == (["x", 2], {"first": 1})


def test_a_value_given_twice_is_refused() -> None:
    signature = analyse("t", named)
    with pytest.raises(ArgumentError, match="multiple values for 'tenant'"):
        signature.coerce_extras(["a"], {"tenant": "b"})


def test_an_invalid_extra_names_its_argument() -> None:
    signature = analyse("t", named)
    with pytest.raises(ArgumentError) as info:
        signature.coerce_extras(["a"], {"weight": "heavy"})
    assert str(info.value) == (
        "argument 'weight' is invalid: 1 validation error(s): int_parsing"
    )
    with pytest.raises(ArgumentError, match="argument 'weight'='heavy' is invalid"):
        signature.coerce_extras(["a"], {"weight": "heavy"}, values=True)


def test_untyped_extras_are_taken_as_they_are() -> None:
    signature = analyse("t", named)
    value = {"any": ["thing"]}
    _, kwargs = signature.coerce_extras(["a"], {"note": value})
    assert kwargs["note"] is value


def test_dependencies_are_not_extra_arguments() -> None:
    async def with_deps(
        items: list[int],
        tenant: str,
        context: Context = TaskiqDepends(),
        info: Annotated[BatchInfo, TaskiqDepends()] = None,  # type: ignore[assignment]
    ) -> None: ...

    signature = analyse("t", with_deps)
    assert signature.dependencies is not None
    assert [p.name for p in signature.positional] == ["tenant"]
    assert [p.name for p in signature.keywords] == ["tenant"]
    assert analyse("t", named).dependencies is None


# --- on a broker ------------------------------------------------------------------


async def test_extra_arguments_split_batches() -> None:
    broker = memory_broker()
    calls: list[tuple[list[int], str, int]] = []

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int], tenant: str, weight: int = 1) -> str:
        calls.append((items, tenant, weight))
        return tenant

    await broker.startup()
    sent = [
        await handler.kiq(1, tenant="a"),
        await handler.kiq(2, tenant="b"),
        await handler.kiq(3, "a"),
        await handler.kiq(4, tenant="b"),
        await handler.kiq(5, tenant="a", weight="2"),  # type: ignore[call-overload]
        await handler.kiq(6, tenant="a", weight=2),
    ]
    await broker.wait_all()
    assert sorted(calls) == [([1, 3], "a", 1), ([2, 4], "b", 1), ([5, 6], "a", 2)]
    results = [(await t.wait_result(timeout=1)).return_value for t in sent]
    assert results == ["a", "b", "a", "b", "a", "a"]
    await broker.shutdown()


async def test_items_are_coerced_and_a_bad_item_fails_alone() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=3, batch_timeout=5)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    await broker.startup()
    good1 = await handler.kiq("1")  # type: ignore[call-overload]
    bad = await handler.kiq("not a number")  # type: ignore[call-overload]
    good2 = await handler.kiq(2)
    good3 = await handler.kiq(3.0)  # type: ignore[call-overload]
    await broker.wait_all()
    assert seen.batches == [[1, 2, 3]]
    error = (await bad.wait_result(timeout=1)).error
    assert isinstance(error, BatchItemError)
    assert error.task_id == bad.task_id
    assert error.task_name == handler.task_name
    assert str(error).endswith(
        "item does not fit items: 1 validation error(s): int_parsing"
    )
    for task in (good1, good2, good3):
        assert (await task.wait_result(timeout=1)).return_value == 6
    await broker.shutdown()


async def test_a_bad_extra_argument_fails_its_message_alone() -> None:
    broker = memory_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=2, batch_timeout=5)
    async def handler(items: list[int], weight: int) -> int:
        seen.record(items)
        return weight

    await broker.startup()
    ok = [await handler.kiq(1, weight=2), await handler.kiq(2, weight=2)]
    bad = await handler.kiq(3, weight="heavy")  # type: ignore[call-overload]
    await broker.wait_all()
    assert seen.batches == [[1, 2]]
    error = (await bad.wait_result(timeout=1)).error
    assert isinstance(error, BatchItemError)
    assert "argument 'weight' is invalid" in str(error)
    assert [(await t.wait_result(timeout=1)).return_value for t in ok] == [2, 2]
    await broker.shutdown()


async def send_raw(args: tuple[Any, ...]) -> BaseException | None:
    """The error of a message of ``handler(items)`` sent with these arguments."""
    broker = memory_broker()

    @batch_task(broker, batch_size=1)
    async def handler(items: list[int]) -> int:
        return len(items)

    await broker.startup()
    # What a producer that does not use the typed API may send.
    kicker: AsyncKicker[Any, Any] = AsyncKicker(handler.task_name, broker, {})
    task = await kicker.kiq(*args)
    await broker.wait_all()
    result = await task.wait_result(timeout=1)
    await broker.shutdown()
    assert result.is_err
    return result.error


async def test_a_message_without_an_item_fails_clearly() -> None:
    error = await send_raw(())
    assert isinstance(error, BatchItemError)
    assert "no item: send one item per message" in str(error)


async def test_a_message_with_an_argument_too_many_fails() -> None:
    assert isinstance(await send_raw((1, 2)), Exception)


async def test_a_message_with_an_argument_too_many_fails_alone_as_an_item_error() -> (
    None
):
    assert isinstance(await send_raw((1, 2)), BatchItemError)


def test_calling_the_task_directly_calls_the_batch_function() -> None:
    broker = memory_broker()

    @batch_task(broker, batch_size=3)
    def handler(items: list[int], offset: int = 0) -> int:
        return sum(items) + offset

    assert handler([1, 2, 3]) == 6
    assert handler([1], offset=10) == 11
    assert handler.task([4, 5]) == 9


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (int, [0, -7, 2**70]),
        (str, ["", "é", "12", "\ud800"]),
        (float, [0.5, float("inf"), -0.0]),
        (bool, [True, False]),
    ],
)
def test_a_plain_item_of_exactly_its_type_is_taken_as_pydantic_gives_it(
    kind: type, values: list[Any]
) -> None:
    async def batch(items: list[kind]) -> None: ...  # type: ignore[valid-type]

    signature = analyse("t", batch)
    assert signature.plain_item is kind
    adapter = signature.item_adapter
    assert adapter is not None
    for value in values:
        # What it skips is what pydantic would give back: the same value.
        given = adapter.validate_python(value)
        assert type(given) is kind
        assert given == value
        item, _, _ = signature.prepare("t", "id", [value], {})
        assert item is value


def test_a_plain_item_skips_validation_and_anything_else_is_validated() -> None:
    async def ints(items: list[int]) -> None: ...

    signature = analyse("t", ints)
    calls: list[Any] = []
    assert signature.item_adapter is not None
    adapter: TypeAdapter[Any] = signature.item_adapter

    class Validator:
        def validate_python(self, value: Any) -> Any:
            calls.append(value)
            return adapter.validate_python(value)

    class Spy:
        validator = Validator()

    signature.item_adapter = Spy()  # type: ignore[assignment]
    assert signature.prepare("t", "id", [5], {})[0] == 5
    assert calls == []  # an int item of a list[int] function: no call
    assert signature.prepare("t", "id", ["6"], {})[0] == 6  # converted
    assert signature.prepare("t", "id", [True], {})[0] == 1  # a bool is no int here
    assert calls == ["6", True]
    with pytest.raises(BatchItemError):
        signature.prepare("t", "id", ["seven"], {})


@pytest.mark.parametrize("hint", [list[Annotated[int, "meta"]], list[Row], list[Any]])
def test_other_item_types_have_no_plain_type(hint: Any) -> None:
    async def batch(items: hint) -> None: ...

    assert analyse("t", batch).plain_item is None
