"""taskiq-redis's sentinel and cluster brokers through the Redis transports.

The tests use private servers (a master with a sentinel, a one-node
cluster) on free loopback ports, started once a session (``servers``).
"""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from taskiq import AsyncBroker, AsyncResultBackend, TaskiqDepends
from taskiq_redis import (
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisAsyncClusterResultBackend,
    RedisAsyncSentinelResultBackend,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.transports import transport_for
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.helpers import Recorder, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _sentinel(env: dict[str, str], kind: str, queue: str) -> AsyncBroker:
    host, port = env["TEST_REDIS_SENTINELS"].split(":")
    sentinels = [(host, int(port))]
    master = env["TEST_REDIS_SENTINEL_MASTER_NAME"]
    backend: AsyncResultBackend[Any] = RedisAsyncSentinelResultBackend(
        sentinels, master, prefix_str=queue
    )
    broker_class = (
        RedisStreamSentinelBroker if kind == "stream" else ListQueueSentinelBroker
    )
    broker: AsyncBroker = broker_class(sentinels, master, queue_name=queue)
    return broker.with_result_backend(backend)


def _cluster(env: dict[str, str], kind: str, queue: str) -> AsyncBroker:
    url = env["TEST_REDIS_CLUSTER_URL"]
    backend: AsyncResultBackend[Any] = RedisAsyncClusterResultBackend(
        url, prefix_str=queue
    )
    broker_class = (
        RedisStreamClusterBroker if kind == "stream" else ListQueueClusterBroker
    )
    broker: AsyncBroker = broker_class(url, queue_name=queue)
    return broker.with_result_backend(backend)


VARIANTS: dict[str, Callable[[dict[str, str], str, str], AsyncBroker]] = {
    "sentinel": _sentinel,
    "cluster": _cluster,
}


@pytest.mark.parametrize("kind", ["stream", "list"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_sentinel_and_cluster_brokers_batch_through_the_redis_transports(
    servers: dict[str, str], variant: str, kind: str
) -> None:
    queue = f"tb-{variant}-{kind}-{uuid.uuid4().hex[:8]}"
    broker = VARIANTS[variant](servers, kind, queue).with_middlewares(
        BatchingMiddleware()
    )
    expected = StreamTransport if kind == "stream" else ListTransport
    assert type(transport_for(broker)) is expected
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=0.5, task_name="total")
    async def total(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return len(items)

    await broker.startup()
    async with running_worker(broker):
        sent = await total.kiq_many(range(250))
        results = [await task.wait_result(timeout=20) for task in sent]
    assert sorted(seen.sizes) == [50, 100, 100]
    assert [r.return_value for r in results] == [100] * 200 + [50] * 50
