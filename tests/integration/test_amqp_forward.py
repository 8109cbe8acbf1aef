"""RabbitMQ forwarding on the real server: copies stored, then originals acked.

The forward writes a chunk's publishes in one piece, encoded by hand
(``amqp_wire``, ``_compat.amqp_publish_frames``), and returns before the
confirms; each original is acked on the main queue once its copy is
confirmed.
"""

from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from taskiq import BrokerMessage
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

from taskiq_batching._compat import amqp_publish_frames
from taskiq_batching.core.analysis import analyse
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import amqp_forward
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.amqp_queues import batch_queue_name
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TASK = "collect"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-forward"


@pytest.fixture
def extra_queues(queue: str) -> list[str]:
    return [batch_queue_name(queue, TASK)]


async def collect(items: list[bytes]) -> None: ...


async def test_forwarded_copies_are_stored_whole_and_originals_acked(
    rabbitmq_url: str,
    queue: str,
    channel: AbstractChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[int] = []
    publish_frames = amqp_publish_frames

    async def spied(underlay: Any, frames: Any) -> Any:
        futures = await publish_frames(underlay, frames)
        if futures is not None:
            written.append(len(frames))
        return futures

    monkeypatch.setattr(amqp_forward, "amqp_publish_frames", spied)
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=100,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    broker.is_worker_process = True
    await broker.startup()
    transport = AmqpTransport(broker, wait_in_broker=True)
    settings = BatchSettings(batch_size=10)
    spec = BatchSpec(TASK, settings, analyse(TASK, collect), None)
    bodies = [f"m{index}".encode() * 50 for index in range(30)]
    try:
        for index, body in enumerate(bodies):
            await broker.kick(
                BrokerMessage(
                    task_id=str(index), task_name=TASK, message=body, labels={}
                )
            )
        got: list[Delivery] = []
        while len(got) < len(bodies):
            got.extend(await transport.read(100))
        assert transport.forwarder is not None
        await transport.forwarder.forward([(d, spec, "") for d in got])
        await transport.forwarder.settled()
    finally:
        await transport.close()
        await broker.shutdown()
    assert written == [30]  # one write for the chunk
    main = await channel.declare_queue(queue, passive=True)
    assert main.declaration_result.message_count == 0  # every original acked
    copies = await channel.get_queue(batch_queue_name(queue, TASK))
    stored: list[aio_pika.abc.AbstractIncomingMessage] = []
    # A single-active-consumer quorum queue has no basic.get: consumed.
    async with copies.iterator(no_ack=True) as messages:
        async for message in messages:
            stored.append(message)
            if len(stored) == len(bodies):
                break
    assert [m.body for m in stored] == bodies
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in stored)
    assert all(m.headers["task_name"] == TASK for m in stored)
    assert all(float(str(m.headers[SENT_AT_LABEL])) > 0 for m in stored)
