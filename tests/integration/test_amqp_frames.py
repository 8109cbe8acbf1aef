"""The AMQP transport's frame reader on the real RabbitMQ.

The worker's read connection reads its frames with ``FrameReader``
(``_compat.amqp_read_frames_with``, once per connection): deliveries
come whole, one frame each, and read like those that come frame by frame.
"""

import inspect
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from aiormq.connection import FrameReceiver
from taskiq import BrokerMessage
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

from taskiq_batching._compat import amqp_read_frames_with
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.amqp_frames import FrameReader
from taskiq_batching.transports.delivery import Delivery

#: aiormq 6's receiver (which takes a timeout too) is left in place.
AIORMQ_7 = list(inspect.signature(FrameReceiver).parameters) == ["reader"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not AIORMQ_7, reason="aiormq 6's frame receiver is kept"),
]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-frames"


async def test_deliveries_come_whole_through_the_connections_frame_reader(
    rabbitmq_url: str,
    queue: str,
    channel: AbstractChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole: list[Any] = []
    delivery = FrameReader._delivery

    def counted(self: FrameReader, *args: Any) -> Any:
        found = delivery(self, *args)
        if found is not None:
            whole.append(found)
        return found

    monkeypatch.setattr(FrameReader, "_delivery", counted)
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=50,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    broker.is_worker_process = True
    await broker.startup()
    transport = AmqpTransport(broker)
    try:
        for index in range(20):
            body = f"m{index}".encode()
            sent = BrokerMessage(
                task_id=str(index), task_name="t", message=body, labels={}
            )
            await broker.kick(sent)
        got: list[Delivery] = []
        while len(got) < 20:
            got.extend(await transport.read(50))
        assert [d.data for d in got] == [f"m{i}".encode() for i in range(20)]
        assert whole  # most, unless each read ends within a delivery
        assert broker.read_channel is not None
        read_channel = await broker.read_channel.get_underlay_channel()
        reader = amqp_read_frames_with(read_channel, FrameReader)
        assert isinstance(reader, FrameReader)  # the one made at the start
        assert reader.taps[read_channel.number].channel is read_channel
        await transport.ack([d.handle for d in got])
    finally:
        await transport.close()
        await broker.shutdown()
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0
