"""Results and acks of batched messages through the real Redis, read by a producer."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import (
    BatchingMiddleware,
    BatchItemError,
    BatchResultError,
    BatchTimeoutError,
    batch_task,
    per_item,
)
from tests.helpers import running_worker
from tests.redis_keys import delete_matching

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERIALIZERS = {"json": JSONSerializer, "msgpack": MSGPackSerializer}


@pytest.fixture
async def stream_queue(redis_url: str) -> AsyncIterator[str]:
    queue = f"tb-results-{uuid.uuid4().hex[:10]}"
    yield queue
    async with Redis.from_url(redis_url) as redis:
        await delete_matching(redis, f"{queue}*")


def make_broker(url: str, queue: str, serializer: str) -> AsyncBroker:
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, serializer=SERIALIZERS[serializer](), prefix_str=queue, result_ex_time=60
    )
    return (
        RedisStreamBroker(url, queue_name=queue, xread_block=500)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )


@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
async def test_each_error_of_ours_reaches_the_producer_with_its_type(
    redis_url: str, stream_queue: str, serializer: str
) -> None:
    broker = make_broker(redis_url, stream_queue, serializer)

    @batch_task(broker, batch_size=2, task_name="short")
    async def short(items: list[int]) -> Any:
        return per_item([1])  # one result for two items

    @batch_task(broker, batch_size=1, timeout=0.2, task_name="slow")
    async def slow(items: list[int]) -> None:
        await asyncio.sleep(60)

    @batch_task(broker, batch_size=1, task_name="typed")
    async def typed(items: list[int]) -> None: ...

    await broker.startup()
    async with running_worker(broker):
        wrong_length = [await short.kiq(i) for i in (1, 2)]
        timed_out = await slow.kiq(1)
        invalid = await typed.kiq("not a number")  # type: ignore[call-overload]
        results = {
            "short": await wrong_length[0].wait_result(timeout=10),
            "slow": await timed_out.wait_result(timeout=10),
            "typed": await invalid.wait_result(timeout=10),
        }
    short_error = results["short"].error
    assert isinstance(short_error, BatchResultError)
    assert short_error.task_name == "short"
    timeout_error = results["slow"].error
    assert isinstance(timeout_error, BatchTimeoutError)
    assert isinstance(timeout_error, TimeoutError)
    assert (timeout_error.size, timeout_error.timeout) == (1, 0.2)
    item_error = results["typed"].error
    assert isinstance(item_error, BatchItemError)
    assert item_error.task_id == invalid.task_id


async def test_an_unencodable_result_is_replaced_by_an_error_and_acked(
    redis_url: str, stream_queue: str
) -> None:
    broker = make_broker(redis_url, stream_queue, "json")
    calls: list[list[int]] = []

    class Opaque:
        """Neither pydantic nor JSON can encode it."""

    @batch_task(broker, batch_size=3, task_name="sets")
    async def sets(items: list[int]) -> Any:
        calls.append(items)
        return Opaque()

    await broker.startup()
    async with running_worker(broker):
        sent = [await sets.kiq(i) for i in range(3)]
        results = [await task.wait_result(timeout=10) for task in sent]
    for result in results:
        assert isinstance(result.error, BatchResultError)
    assert calls == [[0, 1, 2]]
    async with Redis.from_url(redis_url) as redis:
        assert (await redis.xpending(stream_queue, "taskiq"))["pending"] == 0


async def test_a_stop_leaves_unacked_manual_messages_pending_and_never_reruns_them(
    redis_url: str, stream_queue: str
) -> None:
    broker = make_broker(redis_url, stream_queue, "json")
    calls: list[list[int]] = []

    @batch_task(broker, batch_size=3, ack_type="manual", task_name="manual")
    async def manual(items: list[int]) -> int:
        calls.append(items)
        return len(items)  # and never acks

    await broker.startup()
    async with running_worker(broker):
        sent = [await manual.kiq(i) for i in range(3)]
        for task in sent:
            await task.wait_result(timeout=10)
    assert calls == [[0, 1, 2]]  # the stop ran nothing again
    async with Redis.from_url(redis_url) as redis:
        assert (await redis.xpending(stream_queue, "taskiq"))["pending"] == 3
