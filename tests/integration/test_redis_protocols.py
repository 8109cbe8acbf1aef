"""The list transport and the result writer, on RESP2 and RESP3 clients of Redis.

A user may give the broker or the result backend ``protocol=3`` (and
redis-py 8.2 speaks RESP3 by default): replies then come in RESP3's types
(maps, nulls, booleans), which hiredis and redis-py's parsers give in
other shapes than RESP2's. The stream transport's reads are in
``test_stream_reader.py``; here: pops and pushes of a list, results
written by hand-packed round trips (their replies read by hiredis or by
the pure-Python parser a user may choose), and a worker's results and
acks end to end.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis._parsers import _AsyncRESP2Parser
from redis.asyncio import Redis
from taskiq import AsyncBroker, BrokerMessage, TaskiqResult
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching._compat.redis_py import hiredis_available
from taskiq_batching.transports import redis_list
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_results import RedisResults
from taskiq_batching.transports.redis_sender import ListSender
from tests.helpers import running_worker
from tests.integration.workers import eventually
from tests.redis_keys import delete_matching

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"]),
]


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"tb-proto-{uuid.uuid4().hex[:10]}"
    yield name
    async with Redis.from_url(redis_url) as redis:
        await delete_matching(redis, f"{name}*")


def messages(queue: str, count: int) -> list[BrokerMessage]:
    return [
        BrokerMessage(task_id=str(i), task_name="t", message=b"m%d" % i, labels={})
        for i in range(count)
    ]


async def test_a_list_is_popped_in_order_pushed_back_and_waited_on(
    redis_url: str, prefix: str, protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_list, "BLOCK_SECONDS", 0.1)
    broker = ListQueueBroker(
        redis_url, queue_name=prefix, protocol=protocol, client_name=prefix
    )
    transport = ListTransport(broker)
    await ListSender(broker).send(messages(prefix, 10))
    first = await transport.read(4)  # RPOP with a count: a list, or a null
    assert [d.data for d in first] == [b"m0", b"m1", b"m2", b"m3"]
    await transport.release(first[2:])
    rest = await transport.read(100)
    assert [d.data for d in rest] == [b"m%d" % i for i in range(2, 10)]
    assert await transport.read(100) == []  # a BRPOP that timed out
    monkeypatch.setattr(redis_list, "BLOCK_SECONDS", 30)
    waiting = asyncio.ensure_future(transport.read(100))
    async with Redis.from_url(redis_url) as redis:

        async def blocked_in_brpop() -> bool:
            clients = await redis.client_list()
            return any(
                c["name"] == prefix and c["cmd"] == "brpop" and "b" in c["flags"]
                for c in clients
            )

        await eventually(blocked_in_brpop, 10, "the transport waits in BRPOP")
        await redis.lpush(prefix, b"late")
    chunk = await asyncio.wait_for(waiting, 10)  # BRPOP's pair of list and value
    assert [d.data for d in chunk] == [b"late"]
    await transport.close()
    await broker.shutdown()


def result(value: Any) -> TaskiqResult[Any]:
    return TaskiqResult(is_err=False, return_value=value, execution_time=0.1)


@pytest.mark.parametrize("parser", ["hiredis", "python"])
@pytest.mark.parametrize(
    "expiry",
    [{"result_ex_time": 600}, {"result_px_time": 600_000}, {}],
    ids=["ex", "px", "never"],
)
async def test_results_are_stored_as_set_result_stores_them(
    redis_url: str, prefix: str, protocol: int, parser: str, expiry: dict[str, Any]
) -> None:
    if parser == "hiredis" and not hiredis_available():
        pytest.skip("hiredis is not installed")
    options: dict[str, Any] = {"parser_class": _AsyncRESP2Parser}
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url,
        prefix_str=prefix,
        protocol=protocol,
        **expiry,
        **({} if parser == "hiredis" else options),
    )
    writer = RedisResults(backend)
    assert writer.wired
    shared = result([1, 2])
    rows = [(f"t{i}", shared if i % 2 else result(i)) for i in range(6)]
    assert await writer.write(rows) == []
    async with Redis.from_url(redis_url) as redis:
        for task_id, stored in rows:
            await backend.set_result(f"ref-{task_id}", stored)
            key, reference = f"{prefix}:{task_id}", f"{prefix}:ref-{task_id}"
            assert await redis.get(key) == await redis.get(reference)
            ttl = await redis.pttl(key)
            assert (0 < ttl <= 600_000) if expiry else ttl == -1
            read = await backend.get_result(task_id)
            assert read.return_value == stored.return_value
    await backend.shutdown()


def make_broker(url: str, kind: str, queue: str, protocol: int) -> AsyncBroker:
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, prefix_str=queue, result_ex_time=60, protocol=protocol
    )
    broker: AsyncBroker = (
        RedisStreamBroker(url, queue_name=queue, xread_block=200, protocol=protocol)
        if kind == "stream"
        else ListQueueBroker(url, queue_name=queue, protocol=protocol)
    )
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


@pytest.mark.parametrize("kind", ["stream", "list"])
async def test_a_worker_batches_acks_and_stores_every_result(
    redis_url: str, prefix: str, protocol: int, kind: str
) -> None:
    broker = make_broker(redis_url, kind, prefix, protocol)

    @batch_task(broker, batch_size=10, batch_timeout=5, task_name="total")
    async def total(items: list[int]) -> int:
        return sum(items)

    await broker.startup()
    sent = await total.kiq_many(range(30))
    async with running_worker(broker):
        results = [await task.wait_result(timeout=20) for task in sent]
    assert sorted(r.return_value for r in results) == sorted(
        [sum(range(10)), sum(range(10, 20)), sum(range(20, 30))] * 10
    )
    async with Redis.from_url(redis_url) as redis:
        if kind == "stream":
            assert (await redis.xpending(prefix, "taskiq"))["pending"] == 0
        else:
            assert await redis.llen(prefix) == 0
