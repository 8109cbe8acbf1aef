"""The reading and sending sides' base classes: what a new broker's module inherits.

The two sides are apart: the worker reads with a ``Consumer``, the
producer sends with a ``Sender`` that is no consumer (issue 19, item 2).
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from taskiq import AckableMessage, AsyncBroker, BrokerMessage, InMemoryBroker
from taskiq.utils import maybe_awaitable
from taskiq_aio_pika import AioPikaBroker
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchingMiddleware
from taskiq_batching.transports import Sender, Transport, sender_for
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.amqp_sender import AmqpSender
from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.generic import GenericTransport
from taskiq_batching.transports.nats import NatsTransport
from taskiq_batching.transports.nats_sender import NatsSender
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_sender import ListSender, StreamSender
from taskiq_batching.transports.redis_stream import StreamTransport
from taskiq_batching.waiting import sender
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)


class Minimal(Consumer[int]):
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
    assert await transport.reclaim() == []
    transport.check([])
    transport.forget([Delivery(b"m", 7)])
    handed = transport.for_receiver(Delivery(b"m", 7))
    assert isinstance(handed, AckableMessage)
    await maybe_awaitable(handed.ack())
    assert minimal.acked == [7], "acked through the consumer's own ack"
    assert transport.for_receiver(Delivery(b"raw")) == b"raw", "no ack: the bytes"


async def test_the_plain_sender_kicks_each_message() -> None:
    broker = QueueBroker()
    plain = Sender(broker)
    assert plain.batch_sender is None
    await plain.send([message("a"), message("b")])
    sent = [broker.queue.get_nowait().task_id for _ in range(2)]
    assert sent == ["a", "b"], "kick each by default"
    await plain.shutdown()


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
    class Direct(Sender):
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


URL = "redis://localhost:6379/0"
SENTINELS = [("localhost", 26379)]
CLUSTER = "redis://localhost:7000"

#: A broker of each kind the registry knows, made without I/O, and the
#: class of its sender.
KINDS: dict[str, tuple[Callable[[], AsyncBroker], type[Sender]]] = {
    "stream": (lambda: RedisStreamBroker(URL), StreamSender),
    "stream-sentinel": (
        lambda: RedisStreamSentinelBroker(SENTINELS, "m"),
        StreamSender,
    ),
    "stream-cluster": (lambda: RedisStreamClusterBroker(CLUSTER), StreamSender),
    "list": (lambda: ListQueueBroker(URL), ListSender),
    "list-sentinel": (lambda: ListQueueSentinelBroker(SENTINELS, "m"), ListSender),
    "list-cluster": (lambda: ListQueueClusterBroker(CLUSTER), ListSender),
    "amqp": (lambda: AioPikaBroker("amqp://guest:guest@localhost/"), AmqpSender),
    "nats": (lambda: PullBasedJetStreamBroker("nats://127.0.0.1:4222"), NatsSender),
    "generic": (QueueBroker, Sender),
    "inmemory": (InMemoryBroker, Sender),
}
#: The kinds whose batched tasks' messages may wait in the broker.
WAITING = {"stream", "stream-sentinel", "stream-cluster", "list", "list-sentinel"}
WAITING |= {"list-cluster", "amqp", "nats"}


@pytest.mark.parametrize(
    "kind",
    [GenericTransport, StreamTransport, ListTransport, AmqpTransport, NatsTransport],
)
def test_no_transport_is_a_sender(kind: type[Any]) -> None:
    assert issubclass(kind, Consumer)
    assert not issubclass(kind, Sender)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("wait_in_broker", [None, True])
def test_the_registry_makes_a_sender_that_is_no_consumer(
    name: str, wait_in_broker: bool | None
) -> None:
    make, kind = KINDS[name]
    made = sender_for(make(), wait_in_broker=wait_in_broker)
    assert type(made) is kind
    assert not isinstance(made, Consumer)
    if wait_in_broker and name in WAITING:
        assert made.batch_sender is not None
    else:
        assert made.batch_sender is None


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_the_producers_sender_is_shut_down_with_the_broker(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, kind = KINDS[name]
    broker = make().with_middlewares(BatchingMiddleware())
    made = sender(broker)
    assert type(made) is kind
    assert sender(broker) is made, "one per broker"
    closed: list[Sender] = []

    async def shutdown() -> None:
        closed.append(made)

    monkeypatch.setattr(made, "shutdown", shutdown)
    await BatchingMiddleware.of(broker).shutdown()
    assert closed == [made]
    assert sender(broker) is not made, "the next send makes another"
