"""The reading and sending sides' base classes: what a new broker's module inherits."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import AckableMessage, BrokerMessage
from taskiq.utils import maybe_awaitable

from taskiq_batching.transports import Sender, Transport, sender_for
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.base import Delivery
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.generic import GenericTransport
from taskiq_batching.transports.nats import NatsTransport
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)


class Minimal(Consumer[int], Sender):
    """A broker's module with only the members every broker needs."""

    name = "minimal"
    outstanding = 0

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.acked: list[int] = []

    async def read(self, limit: int) -> list[Delivery]:
        return [Delivery(b"m", 7)]

    async def interrupt(
        self, reading: "asyncio.Future[list[Delivery]]"
    ) -> list[Delivery]:
        return []

    async def ack(self, handles: Sequence[int]) -> None:
        self.acked.extend(handles)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to give back."""

    async def close(self) -> None:
        """Nothing to close."""


def message(task_id: str) -> BrokerMessage:
    return BrokerMessage(task_id=task_id, task_name="t", message=b"m", labels={})


async def test_a_broker_with_the_required_members_is_a_transport() -> None:
    broker = QueueBroker()
    minimal = Minimal(broker)
    transport: Transport = minimal
    assert (transport.acknowledges, transport.prefetch) == (True, None)
    assert (transport.reclaim_interval, transport.batches) == (None, None)
    assert minimal.forwarder is None
    assert minimal.batch_sender is None
    assert await transport.reclaim() == []
    transport.check([])
    transport.forget([Delivery(b"m", 7)])
    handed = transport.for_receiver(Delivery(b"m", 7))
    assert isinstance(handed, AckableMessage)
    await maybe_awaitable(handed.ack())
    assert minimal.acked == [7], "acked through the consumer's own ack"
    assert transport.for_receiver(Delivery(b"raw")) == b"raw", "no ack: the bytes"
    await transport.send([message("a"), message("b")])
    sent = [broker.queue.get_nowait().task_id for _ in range(2)]
    assert sent == ["a", "b"], "kick each by default"
    await minimal.shutdown()


def test_an_abstract_member_left_out_is_refused() -> None:
    class NoAck(Consumer[int]):
        name = "no-ack"

        async def read(self, limit: int) -> list[Delivery]:
            return []

        async def interrupt(self, reading: Any) -> list[Delivery]:
            return []

        async def release(self, deliveries: Sequence[Delivery]) -> None:
            """Nothing."""

        async def close(self) -> None:
            """Nothing."""

    with pytest.raises(TypeError, match="ack"):
        NoAck()  # type: ignore[abstract]


async def test_a_sender_writes_directly_only_for_the_shipped_kick() -> None:
    class Direct(Minimal):
        shipped_kicks = (QueueBroker.kick,)

        async def send_direct(self, messages: Sequence[BrokerMessage]) -> None:
            self.direct = [m.task_id for m in messages]

    class OwnKick(QueueBroker):
        async def kick(self, message: BrokerMessage) -> None:
            await super().kick(message)

    shipped = Direct(QueueBroker())
    await shipped.send([message("a")])
    assert shipped.direct == ["a"]
    own = OwnKick()
    overridden = Direct(own)
    await overridden.send([message("b")])
    assert not hasattr(overridden, "direct")
    assert own.queue.get_nowait().task_id == "b"


@pytest.mark.parametrize(
    "kind",
    [GenericTransport, StreamTransport, ListTransport, AmqpTransport, NatsTransport],
)
def test_every_transport_is_a_consumer_and_a_sender(kind: type[Any]) -> None:
    assert issubclass(kind, Consumer)
    assert issubclass(kind, Sender)


def test_the_producer_sender_comes_from_the_registry() -> None:
    sender = sender_for(QueueBroker())
    assert isinstance(sender, Sender)
    assert sender.batch_sender is None
