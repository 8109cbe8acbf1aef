"""Batched messages waiting in Redis, on sentinel and cluster stream and list brokers.

The tests use private servers (a master with a sentinel, a one-node
cluster) on free loopback ports, started once a session (``servers``).
"""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from taskiq_redis import (
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchingMiddleware
from taskiq_batching.spec import BatchSpec
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


def _list_sentinel(env: dict[str, str], queue: str) -> Broker:
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    master = env["TEST_REDIS_SENTINEL_MASTER_NAME"]
    return ListQueueSentinelBroker([(host, int(port))], master, queue_name=queue)


def _list_cluster(env: dict[str, str], queue: str) -> Broker:
    return ListQueueClusterBroker(env["TEST_REDIS_CLUSTER_URL"], queue_name=queue)


#: (kind, variant): the broker on the session's servers, for a queue.
BROKERS: dict[tuple[str, str], Callable[[dict[str, str], str], Broker]] = {
    ("stream", "sentinel"): _sentinel,
    ("stream", "cluster"): _cluster,
    ("list", "sentinel"): _list_sentinel,
    ("list", "cluster"): _list_cluster,
}
SOURCES: dict[str, Callable[[Any, BatchSpec], Any]] = {
    "stream": source,
    "list": list_source,
}


def _with_plugin(broker: Broker, wait: bool) -> Broker:
    middleware = BatchingMiddleware(wait_in_broker=wait)
    broker.add_middlewares(middleware)
    return broker


@pytest.mark.parametrize(
    ("kind", "variant"), sorted(BROKERS), ids=["-".join(k) for k in sorted(BROKERS)]
)
async def test_sends_takes_forwards_and_wakes(
    servers: dict[str, str], kind: str, variant: str
) -> None:
    """Sent with ``kiq_many`` and ``kiq``, woken, taken whole with a plain
    producer's message forwarded; then acked (stream: nothing left) or
    given back and taken again (list)."""
    queue = f"tb-{kind[0]}v-{variant}-{uuid.uuid4().hex[:8]}"
    worker = _with_plugin(BROKERS[kind, variant](servers, queue), wait=True)
    task = declare(worker, 5, 30)
    src = SOURCES[kind](worker, spec_of(task))
    plain = _with_plugin(BROKERS[kind, variant](servers, queue), wait=False)
    plain_task = declare(plain, 5, 30)
    await worker.startup()
    await plain.startup()
    try:
        sent = [t.task_id for t in await task.kiq_many(range(3))]
        sent.append((await task.kiq(3)).task_id)  # one MULTI
        waiting = asyncio.ensure_future(src.batches.idle([src.spec], 2.0))
        await asyncio.wait_for(waiting, 5)  # a wake was there already
        assert (await src.batches.take(src.spec, 1)).batches == []  # 4 of 5
        forwarded = await plain_task.kiq(4)  # plain: on the main stream or list
        (delivery,) = await src.transport.read(10)
        await src.batches.forward([(delivery, src.spec, "-")])
        (batch,) = (await src.batches.take(src.spec, 1)).batches
        assert task_ids(batch) == [*sent, forwarded.task_id]
        assert batch.reason == "size"
        redis = src.transport.client.redis
        if kind == "stream":
            assert isinstance(src.transport, StreamTransport)
            await src.transport.ack([d.handle for d in batch.deliveries])
            assert await redis.xlen(src.names.stream("-")) == 0
            pending = await redis.xpending(queue, src.transport.group)
            assert pending["pending"] == 0
        else:
            await src.transport.release(batch.deliveries)
            (again,) = (await src.batches.take(src.spec, 1)).batches
            assert task_ids(again) == task_ids(batch)
            assert await redis.llen(src.names.stream("-")) == 0
            assert await redis.llen(queue) == 0
    finally:
        await worker.shutdown()
        await plain.shutdown()
