"""Many results at once, written as taskiq-redis's ``set_result`` writes each.

Commands packed by hand in one round trip (``SET ... EX/PX`` per key, or
one ``MSET``), their replies read by hiredis: they must store what
``set_result`` stores.
"""

from typing import Any

import pytest
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from taskiq import TaskiqResult
from taskiq.abc.serializer import TaskiqSerializer
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching.transports import ResultWriter, redis_results, redis_wire
from taskiq_batching.transports.redis_results import RedisResults
from tests.unit.transports.conftest import CommandLog
from tests.unit.transports.fake_redis import split_commands

pytestmark = pytest.mark.timeout(30)

#: Brokers and backends speaking RESP2, then RESP3 (``fake``'s ``protocol``).
ON_BOTH_PROTOCOLS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])

URL = "redis://fake:6379/0"
SERIALIZERS: dict[str, type[TaskiqSerializer]] = {
    "json": JSONSerializer,
    "msgpack": MSGPackSerializer,
}


class Row(BaseModel):
    id: int


def backend_of(
    fake: dict[str, Any], serializer: str = "json", **options: Any
) -> RedisAsyncResultBackend[Any]:
    return RedisAsyncResultBackend(
        URL, serializer=SERIALIZERS[serializer](), **options, **fake
    )


class Wire:
    """Every round trip of the hand-packed writes: the commands, and replies."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trips: list[list[bytes]] = []
        self.answer: Any = None
        real = redis_wire.round_trip

        async def round_trip(redis: Any, packed: Any, replies: int) -> list[Any]:
            packed = list(packed)
            self.trips.append(packed)
            if self.answer is not None:
                return list(await self.answer(packed, replies))
            return await real(redis, packed, replies)

        monkeypatch.setattr(redis_results, "round_trip", round_trip)

    def commands(self) -> list[list[bytes]]:
        """Each command sent, as its list of arguments (RESP decoded)."""
        found, rest = split_commands(b"".join(p for trip in self.trips for p in trip))
        assert not rest
        return found


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    return Wire(monkeypatch)


def ok(value: Any = None) -> TaskiqResult[Any]:
    return TaskiqResult(
        is_err=False,
        return_value=[1, 2] if value is None else value,
        execution_time=0.5,
        labels={"batch": True},
    )


def failed() -> TaskiqResult[Any]:
    return TaskiqResult(
        is_err=True,
        return_value=None,
        execution_time=0.1,
        error=ValueError("bad"),
        labels={"x": "1"},
    )


def unserializable() -> TaskiqResult[Any]:
    return TaskiqResult(is_err=False, return_value=object(), execution_time=0.1)


def test_it_is_a_result_writer(fake: dict[str, Any]) -> None:
    writer: ResultWriter = RedisResults(backend_of(fake))
    assert isinstance(writer, RedisResults)


def test_results_travel_in_one_round_trip(fake: dict[str, Any]) -> None:
    assert RedisResults(backend_of(fake)).wired


@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
@pytest.mark.parametrize(
    "options",
    [{}, {"result_ex_time": 60, "prefix_str": "p"}, {"result_px_time": 90_000}],
    ids=["plain", "ex-prefix", "px"],
)
@ON_BOTH_PROTOCOLS
async def test_written_results_equal_what_set_result_writes(
    fake: dict[str, Any],
    redis: Any,
    serializer: str,
    options: dict[str, Any],
) -> None:
    backend = backend_of(fake, serializer, **options)
    writer = RedisResults(backend)
    shared, error, model = ok(), failed(), ok(Row(id=3))
    # Shared result objects are written once per key: one value for all, or
    # several values, each key with its own.
    assert (
        await writer.write(
            [("bulk-ok", shared), ("bulk-err", error), ("bulk-ok2", shared)]
        )
        == []
    )
    assert await writer.write([("same-1", shared), ("same-2", shared)]) == []
    assert await writer.write([("model", model)]) == []
    await backend.set_result("one-ok", shared)
    await backend.set_result("one-err", error)
    await backend.set_result("one-model", model)
    prefix = f"{options['prefix_str']}:" if "prefix_str" in options else ""
    pairs = [
        ("bulk-ok", "one-ok"),
        ("bulk-err", "one-err"),
        ("bulk-ok2", "one-ok"),
        ("same-1", "one-ok"),
        ("same-2", "one-ok"),
        ("model", "one-model"),
    ]
    for bulk, single in pairs:
        written = await redis.get(prefix + bulk)
        assert written is not None
        assert written == await redis.get(prefix + single)
        bulk_ttl = await redis.pttl(prefix + bulk)
        single_ttl = await redis.pttl(prefix + single)
        if options.get("result_ex_time") or options.get("result_px_time"):
            assert abs(bulk_ttl - single_ttl) < 1000
            assert bulk_ttl > 0
        else:
            assert bulk_ttl == single_ttl == -1
    assert (await backend.get_result("bulk-ok")).return_value == [1, 2]
    error_back = (await backend.get_result("bulk-err")).error
    assert isinstance(error_back, ValueError)
    assert str(error_back) == "bad"
    await backend.shutdown()


@pytest.mark.parametrize(
    ("options", "expiry"),
    [
        ({"result_ex_time": 60}, [b"EX", b"60"]),
        ({"result_px_time": 90_000}, [b"PX", b"90000"]),
    ],
    ids=["ex", "px"],
)
async def test_each_key_is_one_set_with_the_expiry_in_one_trip(
    fake: dict[str, Any],
    redis: Any,
    commands: CommandLog,
    wire: Wire,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    expiry: list[bytes],
) -> None:
    backend = backend_of(fake, prefix_str="p", **options)
    writer = RedisResults(backend)
    encoded: list[Any] = []
    dumpb = backend.serializer.dumpb

    def counting(value: Any) -> bytes:
        encoded.append(value)
        return dumpb(value)

    monkeypatch.setattr(backend.serializer, "dumpb", counting)
    first, second = ok(), ok("other")
    results = [(f"k{i}", first if i % 3 else second) for i in range(9)]
    commands.clear()
    assert await writer.write(results) == []
    assert len(encoded) == 2  # each distinct result encoded once
    assert len(wire.trips) == 1
    values = {id(first): dumpb(first.model_dump(mode="json"))}
    values[id(second)] = dumpb(second.model_dump(mode="json"))
    assert wire.commands() == [
        [b"SET", f"p:{task_id}".encode(), values[id(result)], *expiry]
        for task_id, result in results
    ]
    assert commands.commands == []  # no script, nothing else
    for task_id, result in results:
        assert await redis.get(f"p:{task_id}") == values[id(result)]
    await backend.shutdown()


async def test_results_that_never_expire_are_one_mset(
    fake: dict[str, Any], redis: Any, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(fake)
    writer = RedisResults(backend)
    shared = ok()
    assert await writer.write([("a", shared), ("b", failed()), ("c", shared)]) == []
    ((name, *args),) = wire.commands()
    assert name == b"MSET"
    assert args[::2] == [b"a", b"b", b"c"]
    await backend.set_result("one-ok", shared)
    await backend.set_result("one-err", failed())
    assert args[1::2] == [await redis.get(k) for k in ("one-ok", "one-err", "one-ok")]
    for key in ("a", "b", "c"):
        assert await redis.pttl(key) == -1
    await backend.shutdown()


async def test_a_key_the_server_refused_is_reported_alone(
    fake: dict[str, Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(fake, result_ex_time=60)
    writer = RedisResults(backend)
    refused = ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    async def answer(packed: list[bytes], replies: int) -> list[Any]:
        return [b"OK", refused, b"OK"][:replies]

    wire.answer = answer
    failures = await writer.write([("a", ok()), ("bad", unserializable()), ("b", ok())])
    assert [index for index, _ in failures] == [1, 2]
    assert failures[1][1] is refused
    await backend.shutdown()


@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
async def test_an_unserializable_result_is_reported_alone(
    fake: dict[str, Any], redis: Any, serializer: str
) -> None:
    backend = backend_of(fake, serializer)
    writer = RedisResults(backend)
    failures = await writer.write(
        [("a", ok()), ("bad", unserializable()), ("b", failed())]
    )
    assert [index for index, _ in failures] == [1]
    assert isinstance(failures[0][1], Exception)
    assert await redis.get("bad") is None
    assert (await backend.get_result("a")).return_value == [1, 2]
    assert (await backend.get_result("b")).is_err
    await backend.shutdown()


async def test_a_failed_write_reports_each_of_its_results(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(fake)
    writer = RedisResults(backend)
    lost = RedisConnectionError("gone")

    async def refuse(*args: Any) -> None:
        raise lost

    monkeypatch.setattr(redis_results, "round_trip", refuse)
    failures = await writer.write([("a", ok()), ("bad", unserializable()), ("b", ok())])
    assert [index for index, _ in failures] == [0, 1, 2]
    assert failures[0][1] is lost
    assert failures[2][1] is lost
    assert failures[1][1] is not lost
    # A lost connection is no reason to change the way results travel.
    assert writer.wired
    await backend.shutdown()


async def test_nothing_to_write_sends_nothing(
    fake: dict[str, Any], commands: CommandLog, wire: Wire
) -> None:
    writer = RedisResults(backend_of(fake))
    commands.clear()
    assert await writer.write([]) == []
    assert await writer.write([("bad", unserializable())]) != []
    assert commands.commands == []
    assert wire.trips == []


class OwnNames(RedisAsyncResultBackend[Any]):
    """A backend that names its keys its own way."""

    def _task_name(self, task_id: str) -> str:
        return f"own/{task_id}/result"


@pytest.mark.parametrize("options", [{}, {"result_ex_time": 60}], ids=["mset", "set"])
async def test_a_backend_naming_keys_its_own_way_gets_its_keys(
    fake: dict[str, Any], redis: Any, options: dict[str, Any]
) -> None:
    backend = OwnNames(URL, serializer=JSONSerializer(), **options, **fake)
    writer = RedisResults(backend)
    shared = ok()
    task_ids = ["a", "bb", "c" * 32, "é"]
    assert await writer.write([(task_id, shared) for task_id in task_ids]) == []
    for task_id in task_ids:
        assert await redis.get(f"own/{task_id}/result") is not None
        assert (await backend.get_result(task_id)).return_value == [1, 2]
    await backend.shutdown()


async def test_keys_are_named_once_per_write_not_once_per_result(
    fake: dict[str, Any], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(fake, prefix_str="p", result_ex_time=60)
    writer = RedisResults(backend)
    names: list[str] = []
    name = RedisAsyncResultBackend._task_name

    def counting(self: Any, task_id: str) -> str:
        names.append(task_id)
        return name(self, task_id)

    # The stock namer, counted: keys are its prefix and each task_id.
    monkeypatch.setattr(RedisAsyncResultBackend, "_task_name", counting)
    monkeypatch.setattr(
        "taskiq_batching._compat.redis._stock_namers", lambda: (counting,)
    )
    task_ids = [f"{i:032x}" for i in range(50)] + ["short", "é"]
    assert await writer.write([(task_id, ok()) for task_id in task_ids]) == []
    assert len(names) == 1
    for task_id in task_ids:
        assert (await backend.get_result(task_id)).return_value == [1, 2]
    await backend.shutdown()
