"""``batch_key``: messages share a batch exactly when their extra arguments do."""

import dataclasses
from collections.abc import Hashable
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr

from taskiq_batching import batch_task
from taskiq_batching.core.keys import batch_key
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


class Credentials(BaseModel):
    user: str
    password: str = Field(repr=False)


class Tenant(BaseModel):
    name: str
    api_key: SecretStr
    tags: list[str] = []
    limits: dict[str, int] = {}


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


@dataclasses.dataclass
class Point:
    x: Any
    y: Any


@dataclasses.dataclass(frozen=True)
class FrozenPoint:
    x: Any
    y: Any


class Unhashable:
    """Compared by value, as a user's class may be, but not hashable."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unhashable) and other.value == self.value


class OtherUnhashable(Unhashable):
    """Another class, unhashable too (it inherits ``__hash__ = None``)."""


def key(*args: Any, **kwargs: Any) -> Hashable:
    return batch_key(list(args), kwargs)


def same(first: Hashable, second: Hashable) -> bool:
    """Equal keys, and equal hashes: a dict sees them as one key."""
    if first == second:
        assert hash(first) == hash(second)
        assert len({first: 1, second: 2}) == 1
        return True
    assert len({first: 1, second: 2}) == 2
    return False


def test_no_extra_arguments() -> None:
    assert key() == ()
    assert same(key(), batch_key([], {}))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (SecretStr("a"), SecretStr("b")),
        (SecretBytes(b"a"), SecretBytes(b"b")),
        (Credentials(user="u", password="a"), Credentials(user="u", password="b")),
        (
            Tenant(name="t", api_key=SecretStr("a")),
            Tenant(name="t", api_key=SecretStr("b")),
        ),
        (1, True),
        (1, 1.0),
        (0, False),
        (True, 1.0),
        ("1", 1),
        (b"a", "a"),
        (None, 0),
        ([1, 2], (1, 2)),
        ([1], [True]),
        ([1, [2]], [1, [2.0]]),
        ({"a": 1}, {"a": True}),
        ({1: "x"}, {True: "x"}),
        ({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}),
        ({1, 2}, {1, 2.5}),
        ({1, 2}, frozenset({1, 2})),
        (Point(1, [2]), Point(1, [3])),
        (Point(1, 2), FrozenPoint(1, 2)),
        (Point(1, SecretStr("a")), Point(1, SecretStr("b"))),
        (
            Tenant(name="t", api_key=SecretStr("k"), tags=["a"]),
            Tenant(name="t", api_key=SecretStr("k"), tags=["b"]),
        ),
        (
            Tenant(name="t", api_key=SecretStr("k"), limits={"a": 1}),
            Tenant(name="t", api_key=SecretStr("k"), limits={"a": 2}),
        ),
        (Unhashable([1]), Unhashable([2])),
        (Unhashable([1]), OtherUnhashable([1])),
    ],
)
def test_different_values_never_share_a_key(first: Any, second: Any) -> None:
    assert not same(key(first), key(second))
    assert not same(key(tenant=first), key(tenant=second))
    assert not same(key([first]), key([second]))
    assert not same(key({"k": first}), key({"k": second}))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SecretStr("secret"),
        lambda: Credentials(user="u", password="p"),
        lambda: Tenant(name="t", api_key=SecretStr("k"), tags=["a"], limits={"x": 1}),
        lambda: {"a": [1, {"b": {2, 3}}], "c": None},
        lambda: [1, "two", 3.0, b"four", None, True],
        lambda: {1, 2, 3},
        lambda: frozenset({"a"}),
        lambda: (1, (2, [3])),
        lambda: Point(1, {"y": [2]}),
        lambda: FrozenPoint(1, 2),
        lambda: Unhashable({"a": [1]}),
        lambda: [Unhashable(1), Unhashable(2)],
        lambda: 10**30,
    ],
)
def test_equal_values_made_apart_share_a_key(make: Any) -> None:
    assert make() is not make() or isinstance(make(), int)
    assert same(key(make()), key(make()))
    assert same(key(x=make(), y=1), key(x=make(), y=1))


def test_an_unhashable_object_is_compared_by_its_own_eq() -> None:
    # Its class says 1 == True: the plugin cannot know better.
    assert same(key(Unhashable(1)), key(Unhashable(True)))
    assert not same(key(Unhashable(1)), key(Unhashable(2)))


def test_keyword_order_does_not_matter() -> None:
    assert same(key(a=1, b="x", c=[1]), key(c=[1], b="x", a=1))


def test_dict_and_set_order_do_not_matter() -> None:
    assert same(key({"a": 1, "b": 2}), key({"b": 2, "a": 1}))
    assert same(key({3, 1, 2}), key({2, 3, 1}))


def test_positions_and_names_are_different_arguments() -> None:
    assert not same(key(1, 2), key(2, 1))
    assert not same(key(1), key(a=1))
    assert not same(key(a=1), key(b=1))
    assert not same(key(a=1), key(a=1, b=None))


def test_models_of_different_classes_with_equal_fields_differ() -> None:
    class A(BaseModel):
        x: int

    class B(BaseModel):
        x: int

    assert not same(key(A(x=1)), key(B(x=1)))


def test_models_with_different_extra_fields_differ() -> None:
    first = Open.model_validate({"name": "t", "api_key": "a"})
    second = Open.model_validate({"name": "t", "api_key": "b"})
    assert first != second
    assert not same(key(first), key(second))


async def test_messages_with_different_secrets_never_share_a_batch() -> None:
    broker = memory_broker()
    calls: list[tuple[list[int], str]] = []

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int], api_key: SecretStr) -> str:
        calls.append((list(items), api_key.get_secret_value()))
        return api_key.get_secret_value()

    await broker.startup()
    sent = [
        await handler.kiq(1, api_key="k1"),  # type: ignore[call-overload]
        await handler.kiq(2, api_key="k2"),  # type: ignore[call-overload]
        await handler.kiq(3, api_key="k1"),  # type: ignore[call-overload]
        await handler.kiq(4, api_key="k2"),  # type: ignore[call-overload]
    ]
    await broker.wait_all()
    assert sorted(calls) == [([1, 3], "k1"), ([2, 4], "k2")]
    results = [(await task.wait_result(timeout=5)).return_value for task in sent]
    assert results == ["k1", "k2", "k1", "k2"]
    await broker.shutdown()


async def test_messages_whose_models_differ_in_extra_fields_never_share_a_batch() -> (
    None
):
    broker = memory_broker()
    calls: list[tuple[list[int], Any]] = []

    @batch_task(broker, batch_size=2, batch_timeout=0.05)
    async def handler(items: list[int], tenant: Open) -> None:
        calls.append((list(items), (tenant.model_extra or {}).get("api_key")))

    await broker.startup()
    await handler.kiq(1, tenant={"name": "t", "api_key": "a"})  # type: ignore[call-overload]
    await handler.kiq(2, tenant={"name": "t", "api_key": "b"})  # type: ignore[call-overload]
    await broker.wait_all()
    await broker.shutdown()
    assert sorted(calls) == [([1], "a"), ([2], "b")]
