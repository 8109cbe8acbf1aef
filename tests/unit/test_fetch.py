"""The bulk list reader yields what ListQueueBroker.listen would, in order."""

from typing import Any

import fakeredis
import pytest
from taskiq import BrokerMessage
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from taskiq_batching.fetch import listener_for

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"


async def read(listener: Any, count: int) -> list[bytes]:
    return [await anext(listener) for _ in range(count)]


async def test_same_messages_same_order_as_the_brokers_own_listener() -> None:
    fake: dict[str, Any] = {
        "connection_class": fakeredis.FakeAsyncRedisConnection,
        "server": fakeredis.FakeServer(),
    }
    broker = ListQueueBroker(URL, queue_name="fetch", **fake)
    payloads = [f"m{i}".encode() for i in range(250)]

    async def load() -> None:
        for index, payload in enumerate(payloads):
            message = BrokerMessage(
                task_id=str(index), task_name="t", message=payload, labels={}
            )
            await broker.kick(message)

    await load()
    own = broker.listen()
    assert await read(own, 250) == payloads
    await load()
    bulk = listener_for(broker, broker.listen)()
    assert await read(bulk, 250) == payloads
    await own.aclose()
    await bulk.aclose()
    await broker.shutdown()


def test_other_brokers_keep_their_own_listener() -> None:
    stream = RedisStreamBroker(URL)
    assert listener_for(stream, stream.listen) == stream.listen
