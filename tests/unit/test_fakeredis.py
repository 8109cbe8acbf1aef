"""taskiq-redis brokers over fakeredis, driven by taskiq's own Receiver."""

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from taskiq import AsyncBroker, TaskiqDepends
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from tests.helpers import Recorder, running_worker

pytestmark = pytest.mark.timeout(60)

URL = "redis://fake:6379/0"


def make_broker(
    broker_class: type[ListQueueBroker] | type[RedisStreamBroker],
    server: fakeredis.FakeServer,
    serializer: Any,
) -> AsyncBroker:
    fake: dict[str, Any] = {
        "connection_class": fakeredis.FakeAsyncRedisConnection,
        "server": server,
    }
    broker = broker_class(URL, queue_name="batching-fake", **fake)
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        URL,
        serializer=serializer,
        **fake,
    )
    return (
        broker.with_serializer(serializer)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )


BROKERS = [ListQueueBroker, RedisStreamBroker]
SERIALIZERS: dict[str, Callable[[], Any]] = {
    "json": JSONSerializer,
    "msgpack": MSGPackSerializer,
}


@pytest.mark.parametrize("broker_class", BROKERS)
@pytest.mark.parametrize("serializer", sorted(SERIALIZERS))
async def test_every_message_gets_its_batch_result(
    broker_class: type[ListQueueBroker] | type[RedisStreamBroker],
    serializer: str,
) -> None:
    server = fakeredis.FakeServer()
    broker = make_broker(broker_class, server, SERIALIZERS[serializer]())
    seen = Recorder()

    @batch_task(broker, batch_size=50, batch_timeout=5)
    async def total(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    await broker.startup()  # as a producer would: declares the stream group
    async with running_worker(broker):
        sent = [await total.kiq(i) for i in range(300)]
        results = [await task.wait_result(timeout=10) for task in sent]
    assert seen.sizes == [50] * 6
    for index, result in enumerate(results):
        assert not result.is_err
        assert result.return_value == sum(seen.batches[index // 50])
    if broker_class is RedisStreamBroker:
        check = fakeredis.FakeAsyncRedis(server=server)
        pending = await check.xpending("batching-fake", "taskiq")
        assert pending["pending"] == 0
        await check.aclose()
