"""A batched message's send time over RabbitMQ: set by the producer, read by the worker.

The plugin's kicker and ``kiq_many`` put the send time in a header; the
AMQP transport gives it as ``Delivery.sent_at``. A plain message has
none; a crafted one is ignored, and fails nothing.
"""

import asyncio
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import HeadersType
from taskiq import BrokerMessage, TaskiqDepends, TaskiqMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery
from tests.helpers import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TIMEOUT_SECONDS = 5.0


@pytest.fixture
def queue_prefix() -> str:
    return "tb-sent-at"


@pytest.fixture
async def broker(rabbitmq_url: str, queue: str) -> AsyncIterator[AioPikaBroker]:
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=100,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    ).with_result_backend(InmemoryResultBackend())
    broker.add_middlewares(BatchingMiddleware())
    broker.is_worker_process = True
    yield broker  # tests declare their task, then start it
    await broker.shutdown()
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    await channel.queue_delete(queue)
    await channel.queue_delete(f"{queue}.dead_letter")
    await channel.exchange_delete(queue)
    await connection.close()


async def read(transport: AmqpTransport, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < count:  # bounded by the test's timeout
        got.extend(await transport.read(100))
    return got


async def test_batched_sends_carry_their_send_time_and_plain_ones_none(
    broker: AioPikaBroker, queue: str
) -> None:
    @batch_task(broker, batch_size=10, batch_timeout=1.0)
    async def collect(items: list[int]) -> None:
        return None

    await broker.startup()
    before = time.time()
    await collect.kiq(1)
    await collect.kiq_many([2, 3])
    after = time.time()
    await broker.kick(
        BrokerMessage(task_id="plain", task_name="t", message=b"plain", labels={})
    )
    write = broker.write_channel
    assert write is not None
    exchange = await write.get_exchange(queue, ensure=False)
    # RabbitMQ closes the connection on a NaN in a table: not sent here.
    crafted_values: list[HeadersType] = [
        {SENT_AT_LABEL: "yesterday"},
        {SENT_AT_LABEL: {"a": 1}},
        {SENT_AT_LABEL: "nan"},
        {SENT_AT_LABEL: 1e30},
    ]
    for crafted in crafted_values:
        await exchange.publish(
            aio_pika.Message(b"crafted", headers=crafted),
            routing_key=queue,
        )
    transport = AmqpTransport(broker)
    deliveries = await read(transport, 8)
    stamps = [delivery.sent_at for delivery in deliveries]
    assert all(
        stamp is not None and before <= stamp <= after for stamp in stamps[:3]
    ), stamps
    assert stamps[3:7] == [None, None, None, None]
    # A number far in the future is a number: core bounds it (the read time).
    assert stamps[7] is not None
    assert stamps[7] > after
    await transport.ack([delivery.handle for delivery in deliveries])
    await transport.close()


async def test_a_message_that_waited_in_the_broker_does_not_wait_the_timeout_again(
    broker: AioPikaBroker, queue: str
) -> None:
    started: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

    @batch_task(broker, batch_size=10, batch_timeout=TIMEOUT_SECONDS)
    async def collect(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        await started.put((time.monotonic(), info.flush_reason.value))

    await broker.startup()
    message = broker.formatter.dumps(
        TaskiqMessage(
            task_id="waited",
            task_name=collect.task_name,
            labels={},
            labels_types=None,
            args=[1],
            kwargs={},
        )
    )
    write = broker.write_channel
    assert write is not None
    exchange = await write.get_exchange(queue, ensure=False)
    async with running_worker(broker):
        sent = time.monotonic()
        # Sent TIMEOUT_SECONDS + 1 ago, as by a producer whose message waited.
        stamp = str(time.time() - TIMEOUT_SECONDS - 1.0)
        await exchange.publish(
            aio_pika.Message(message.message, headers={SENT_AT_LABEL: stamp}),
            routing_key=queue,
        )
        began, reason = await asyncio.wait_for(started.get(), 30)
    assert reason == "timeout"
    # Counted from the read, it would start TIMEOUT_SECONDS after the publish.
    assert began - sent < TIMEOUT_SECONDS - 1.0
