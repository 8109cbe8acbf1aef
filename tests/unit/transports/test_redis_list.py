"""The list transport pops, pushes back and sends as taskiq-redis's list brokers do."""

import asyncio
import logging
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import BrokerMessage, TaskiqDepends
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisAsyncResultBackend,
)

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.transports import Transport, redis_common, redis_list
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_sender import ListSender
from tests.helpers import Recorder, running_worker
from tests.unit.transports.conftest import CommandLog

pytestmark = pytest.mark.timeout(30)

#: Brokers and backends speaking RESP2, then RESP3 (``fake``'s ``protocol``).
ON_BOTH_PROTOCOLS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])

URL = "redis://fake:6379/0"


@pytest.fixture(autouse=True)
def short_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty list is waited on this long per read (1 s in production)."""
    monkeypatch.setattr(redis_list, "BLOCK_SECONDS", 0.05)


def list_broker(fake: dict[str, Any]) -> ListQueueBroker:
    return ListQueueBroker(URL, queue_name="q", **fake)


async def kick(broker: Any, payloads: list[bytes], queue: str | None = None) -> None:
    labels = {} if queue is None else {"queue_name": queue}
    for index, payload in enumerate(payloads):
        message = BrokerMessage(
            task_id=str(index), task_name="t", message=payload, labels=labels
        )
        await broker.kick(message)


def payloads(count: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


def data(deliveries: list[Delivery]) -> list[bytes]:
    return [d.data for d in deliveries]


def test_it_is_a_transport_without_acks(fake: dict[str, Any]) -> None:
    transport: Transport = ListTransport(list_broker(fake))
    assert transport.name == "redis-list"
    assert not transport.acknowledges
    assert transport.outstanding == 0
    assert transport.reclaim_interval is None


@ON_BOTH_PROTOCOLS
async def test_reads_pop_in_the_brokers_order_at_most_limit_at_once(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = list_broker(fake)
    transport = ListTransport(broker)
    sent = payloads(25)
    await kick(broker, sent)
    chunks = [await transport.read(10) for _ in range(3)]
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [d for c in chunks for d in data(c)] == sent
    assert all(d.handle is None for c in chunks for d in c)
    assert await redis.llen("q") == 0
    # The broker's own listener gives the same order.
    await kick(broker, sent)
    own = broker.listen()
    assert [await anext(own) for _ in range(25)] == sent
    await own.aclose()
    await broker.shutdown()


@ON_BOTH_PROTOCOLS
async def test_an_empty_list_gives_an_empty_read_then_the_next_message(
    fake: dict[str, Any],
) -> None:
    broker = list_broker(fake)
    transport = ListTransport(broker)
    assert await transport.read(10) == []
    reading = asyncio.ensure_future(transport.read(10))
    await kick(broker, [b"late"])
    assert data(await asyncio.wait_for(reading, 5)) == [b"late"]
    await broker.shutdown()


async def test_released_messages_are_popped_next_in_their_order(
    fake: dict[str, Any],
) -> None:
    broker = list_broker(fake)
    transport = ListTransport(broker)
    await kick(broker, payloads(6))
    popped = await transport.read(4)
    assert data(popped) == payloads(4)
    await transport.release(popped[1:])
    await transport.release([])
    assert data(await transport.read(10)) == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    await broker.shutdown()


async def test_interrupting_waits_for_the_pop_in_progress(
    fake: dict[str, Any],
) -> None:
    broker = list_broker(fake)
    transport = ListTransport(broker)
    await kick(broker, payloads(3))
    reading = asyncio.ensure_future(transport.read(10))
    stopping = asyncio.ensure_future(transport.interrupt(reading))
    assert data(await asyncio.wait_for(stopping, 5)) == payloads(3)
    assert not reading.cancelled()
    await broker.shutdown()


async def test_interrupting_a_stuck_read_gives_up_after_a_while(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_list, "STOP_READ_TIMEOUT", 0.01)
    transport = ListTransport(list_broker(fake))
    stuck: asyncio.Future[list[Delivery]] = asyncio.get_running_loop().create_future()
    assert await transport.interrupt(stuck) == []
    assert stuck.cancelled()


async def test_a_failed_pop_is_retried_after_a_pause(
    fake: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_common, "RETRY_DELAY", 0.001)
    broker = list_broker(fake)
    transport = ListTransport(broker)
    await kick(broker, [b"m"])
    real = transport.client.redis.rpop
    failures = [RedisConnectionError("gone")]

    async def flaky(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(transport.client.redis, "rpop", flaky)
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        assert data(await transport.read(10)) == [b"m"]
    assert "reading q failed (ConnectionError: gone)" in caplog.text
    assert "Redis answers again" in caplog.text
    await broker.shutdown()


async def test_reclaim_ack_and_check_have_nothing_to_do(fake: dict[str, Any]) -> None:
    transport = ListTransport(list_broker(fake))
    assert await transport.reclaim() == []
    await transport.ack([None])
    transport.check([])
    assert transport.for_receiver(Delivery(b"m")) == b"m"


async def test_send_pushes_what_kick_pushes_one_command_per_queue(
    fake: dict[str, Any], redis: Any, commands: CommandLog
) -> None:
    broker = list_broker(fake)
    sender = ListSender(broker)
    messages = [
        BrokerMessage(
            task_id=str(i), task_name="t", message=f"m{i}".encode(), labels={}
        )
        for i in range(4)
    ]
    routed = BrokerMessage(
        task_id="r", task_name="t", message=b"r", labels={"queue_name": "elsewhere"}
    )
    commands.clear()
    await sender.send([*messages[:2], routed, *messages[2:]])
    # One script per queue (LIST_ONCE): script, 2, queue, mark, ttl, "list", values.
    pushes = commands.named("EVAL")
    assert sorted((args[2], len(args) - 6) for args in pushes) == [
        ("elsewhere", 1),
        ("q", 4),
    ]
    by_send = await redis.lrange("q", 0, -1)
    assert await redis.lrange("elsewhere", 0, -1) == [b"r"]
    await redis.delete("q")
    for message in messages:
        await broker.kick(message)
    assert by_send == await redis.lrange("q", 0, -1)
    await broker.shutdown()


async def test_sentinel_and_cluster_list_brokers_have_list_transports() -> None:
    sentinel = ListQueueSentinelBroker(
        sentinels=[("localhost", 26379)], master_name="m"
    )
    cluster = ListQueueClusterBroker("redis://localhost:7000")
    of_sentinel = ListTransport(sentinel)
    assert of_sentinel.client._owned  # its own client of the master
    assert ListTransport(cluster).client.redis is cluster.redis
    await of_sentinel.close()


# --- on a worker ------------------------------------------------------------------


def worker_broker(fake: dict[str, Any], serializer: Any = None) -> ListQueueBroker:
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        URL, serializer=serializer, **fake
    )
    broker = list_broker(fake)
    if serializer is not None:
        broker = broker.with_serializer(serializer)
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


@ON_BOTH_PROTOCOLS
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_every_message_gets_its_batch_result_on_a_worker(
    fake: dict[str, Any], redis: Any, serializer: str
) -> None:
    chosen = JSONSerializer() if serializer == "json" else MSGPackSerializer()
    broker = worker_broker(fake, chosen)
    seen = Recorder()

    @batch_task(broker, batch_size=50, batch_timeout=5)
    async def total(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    async with running_worker(broker):
        sent = [await total.kiq(i) for i in range(300)]
        results = [await task.wait_result(timeout=10) for task in sent]
    assert seen.sizes == [50] * 6
    for index, result in enumerate(results):
        assert not result.is_err
        assert result.return_value == sum(seen.batches[index // 50])
    assert await redis.llen("q") == 0


async def test_a_worker_on_a_list_warns_once_that_nothing_is_acked(
    fake: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    broker = worker_broker(fake)
    seen = Recorder()

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running_worker(broker):
        for item in range(6):
            await handler.kiq(item)
        while len(seen.batches) < 3:
            seen.calls.clear()
            await seen.calls.wait()
    warnings = [r for r in caplog.records if "does not acknowledge" in r.getMessage()]
    assert len(warnings) == 1
    assert "ListQueueBroker" in warnings[0].getMessage()
