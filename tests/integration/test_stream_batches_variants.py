"""Batched messages waiting in Redis, on sentinel and cluster stream and list brokers.

The tests use private servers (a master with a sentinel, a one-node
cluster) on free loopback ports, started once a session (``servers``).
"""

import asyncio
import uuid
from collections.abc import Callable

import pytest
from taskiq_redis import (
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchingMiddleware
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.integration.stream_batches import (
    declare,
    list_source,
    source,
    spec_of,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Broker = (
    RedisStreamSentinelBroker
    | RedisStreamClusterBroker
    | ListQueueSentinelBroker
    | ListQueueClusterBroker
)


def _sentinel(env: dict[str, str], queue: str) -> Broker:
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    master = env["TEST_REDIS_SENTINEL_MASTER_NAME"]
    return RedisStreamSentinelBroker(
        [(host, int(port))],
        master,
        queue_name=queue,
        consumer_name=f"c-{uuid.uuid4().hex[:8]}",
    )


def _cluster(env: dict[str, str], queue: str) -> Broker:
    return RedisStreamClusterBroker(
        env["TEST_REDIS_CLUSTER_URL"],
        queue_name=queue,
        consumer_name=f"c-{uuid.uuid4().hex[:8]}",
    )


VARIANTS: dict[str, Callable[[dict[str, str], str], Broker]] = {
    "sentinel": _sentinel,
    "cluster": _cluster,
}


def _list_sentinel(env: dict[str, str], queue: str) -> Broker:
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    master = env["TEST_REDIS_SENTINEL_MASTER_NAME"]
    return ListQueueSentinelBroker([(host, int(port))], master, queue_name=queue)


def _list_cluster(env: dict[str, str], queue: str) -> Broker:
    return ListQueueClusterBroker(env["TEST_REDIS_CLUSTER_URL"], queue_name=queue)


LIST_VARIANTS: dict[str, Callable[[dict[str, str], str], Broker]] = {
    "sentinel": _list_sentinel,
    "cluster": _list_cluster,
}


def _with_plugin(broker: Broker, wait: bool) -> Broker:
    middleware = BatchingMiddleware(wait_in_broker=wait)
    broker.add_middlewares(middleware)
    return broker


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_sends_takes_forwards_and_wakes(
    servers: dict[str, str], variant: str
) -> None:
    queue = f"tb-bv-{variant}-{uuid.uuid4().hex[:8]}"
    worker = _with_plugin(VARIANTS[variant](servers, queue), wait=True)
    task = declare(worker, 5, 30)
    src = source(worker, spec_of(task))
    plain = _with_plugin(VARIANTS[variant](servers, queue), wait=False)
    plain_task = declare(plain, 5, 30)
    await worker.startup()
    await plain.startup()
    try:
        sent = [t.task_id for t in await task.kiq_many(range(3))]
        sent.append((await task.kiq(3)).task_id)  # one MULTI
        waiting = asyncio.ensure_future(src.batches.idle([src.spec], 2.0))
        await asyncio.wait_for(waiting, 5)  # a wake was there already
        assert (await src.batches.take(src.spec, 1)).batches == []  # 4 of 5
        assert isinstance(src.transport, StreamTransport)
        forwarded = await plain_task.kiq(4)  # plain: on the main stream
        (delivery,) = await src.transport.read(10)
        await src.batches.forward([(delivery, src.spec, "-")])
        got = await src.batches.take(src.spec, 1)
        (batch,) = got.batches
        assert task_ids(batch) == [*sent, forwarded.task_id]
        assert batch.reason == "size"
        await src.transport.ack([d.handle for d in batch.deliveries])
        redis = src.transport.client.redis
        assert await redis.xlen(src.names.stream("-")) == 0
        pending = await redis.xpending(queue, src.transport.group)
        assert pending["pending"] == 0
    finally:
        await worker.shutdown()
        await plain.shutdown()


@pytest.mark.parametrize("variant", sorted(LIST_VARIANTS))
async def test_list_sends_takes_forwards_gives_back_and_wakes(
    servers: dict[str, str], variant: str
) -> None:
    queue = f"tb-lv-{variant}-{uuid.uuid4().hex[:8]}"
    worker = _with_plugin(LIST_VARIANTS[variant](servers, queue), wait=True)
    task = declare(worker, 5, 30)
    src = list_source(worker, spec_of(task))
    plain = _with_plugin(LIST_VARIANTS[variant](servers, queue), wait=False)
    plain_task = declare(plain, 5, 30)
    await worker.startup()
    await plain.startup()
    try:
        sent = [t.task_id for t in await task.kiq_many(range(3))]
        sent.append((await task.kiq(3)).task_id)
        waiting = asyncio.ensure_future(src.batches.idle([src.spec], 2.0))
        await asyncio.wait_for(waiting, 5)  # a wake was there already
        assert (await src.batches.take(src.spec, 1)).batches == []  # 4 of 5
        forwarded = await plain_task.kiq(4)  # plain: on the main list
        (delivery,) = await src.transport.read(10)
        await src.batches.forward([(delivery, src.spec, "-")])
        (batch,) = (await src.batches.take(src.spec, 1)).batches
        assert task_ids(batch) == [*sent, forwarded.task_id]
        assert batch.reason == "size"
        await src.transport.release(batch.deliveries)
        (again,) = (await src.batches.take(src.spec, 1)).batches
        assert task_ids(again) == task_ids(batch)
        redis = src.transport.client.redis
        assert await redis.llen(src.names.stream("-")) == 0
        assert await redis.llen(queue) == 0
    finally:
        await worker.shutdown()
        await plain.shutdown()
