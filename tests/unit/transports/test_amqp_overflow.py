"""RabbitMQ: a task's queue is bounded; what it refuses goes to the main queue."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiormq.exceptions import ChannelPreconditionFailed, DeliveryError
from pamqp.commands import Basic
from taskiq import BrokerMessage
from taskiq_aio_pika import AioPikaBroker, Queue

from taskiq_batching.core.analysis import analyse
from taskiq_batching.errors import SendManyError
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import amqp_overflow
from taskiq_batching.transports.amqp_batches import AmqpBatches
from taskiq_batching.transports.amqp_forward import PAUSE_SECONDS, Forwards
from taskiq_batching.transports.amqp_headers import OVERFLOW_LABEL, Overflowed
from taskiq_batching.transports.amqp_queues import BACKLOG_BATCHES
from taskiq_batching.transports.delivery import Delivery

pytestmark = pytest.mark.timeout(10)


async def collect(items: list[int]) -> None: ...


def _spec(batch_size: int = 50) -> BatchSpec:
    settings = BatchSettings(batch_size=batch_size, batch_timeout=1.0)
    return BatchSpec("collect", settings, analyse("collect", collect), None)


async def _ack(handles: Any) -> None:
    raise AssertionError("not acked here")


class Exchange:
    """The default exchange: answers each publish as the test says."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        self.answers = answers
        self.published: list[tuple[bytes, str]] = []
        #: Set: publishes are answered at once; cleared: they wait for it.
        self.gate = asyncio.Event()
        self.gate.set()
        #: Set at each publish.
        self.more = asyncio.Event()

    async def publish(self, message: Any, routing_key: str) -> None:
        self.published.append((message.body, routing_key))
        self.more.set()
        await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


class FakeChannel:
    """Declares as RabbitMQ would, given the queue's existing arguments."""

    def __init__(self, existing: dict[str, Any] | None, exchange: Exchange) -> None:
        self.existing = existing
        self.default_exchange = exchange
        self.declared: list[tuple[str, dict[str, Any] | None, bool]] = []
        self.prefetch: int | None = None
        self.closed = False
        self.publisher_confirms = True

    async def declare_queue(
        self,
        name: str,
        durable: bool = False,
        arguments: dict[str, Any] | None = None,
        passive: bool = False,
    ) -> str:
        self.declared.append((name, arguments, passive))
        if not passive and self.existing is not None and arguments != self.existing:
            self.closed = True  # a 406 closes the channel
            raise ChannelPreconditionFailed("inequivalent arg 'x-max-length'")
        return name

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count

    async def get_underlay_channel(self) -> "FakeChannel":
        return self

    async def close(self) -> None:
        self.closed = True


class FakeConnection:
    def __init__(self, existing: dict[str, Any] | None = None) -> None:
        self.existing = existing
        self.channels: list[FakeChannel] = []

    async def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel(self.existing, Exchange([])))
        return self.channels[-1]


def _opens(connection: FakeConnection) -> Callable[[], Awaitable[Any]]:
    async def connect() -> FakeConnection:
        return connection

    return connect


def _broker(
    connection: FakeConnection, exchange: Exchange
) -> tuple[AioPikaBroker, list[bytes]]:
    """A started broker's stand-in; what its ``kick`` sent (the main queue)."""
    broker = AioPikaBroker("amqp://nowhere/", task_queues=[Queue(name="jobs")])
    broker.write_conn = connection  # type: ignore[assignment]
    broker.write_channel = FakeChannel(None, exchange)  # type: ignore[assignment]
    kicked: list[bytes] = []

    async def kick(message: BrokerMessage) -> None:
        # Marked for the worker, in the headers only (labels; body as sent).
        assert message.labels.get(OVERFLOW_LABEL) == "1"
        kicked.append(message.message)

    broker.kick = kick  # type: ignore[method-assign]
    return broker, kicked


def _messages(*bodies: bytes) -> list[BrokerMessage]:
    return [
        BrokerMessage(
            task_id=body.decode(), task_name="collect", message=body, labels={}
        )
        for body in bodies
    ]


def _nack() -> DeliveryError:
    return DeliveryError(None, Basic.Nack(delivery_tag=1))


async def test_a_task_queue_is_declared_bounded_to_a_few_batches() -> None:
    connection = FakeConnection()
    batches = AmqpBatches(AioPikaBroker("amqp://nowhere/"), _ack, _opens(connection))
    batches.configure([_spec(50)])

    async def consume(channel: Any, queue: Any, tag: str) -> None: ...

    await batches.start(consume, lambda tags: None)
    [channel] = connection.channels
    [(_, arguments, passive)] = channel.declared
    assert not passive
    assert arguments is not None
    assert arguments["x-max-length"] == BACKLOG_BATCHES * 50
    assert arguments["x-overflow"] == "reject-publish"
    assert arguments["x-single-active-consumer"] is True


async def test_a_message_the_full_queue_refused_goes_through_kick() -> None:
    """Refused: kicked once (it was not stored); accepted: not kicked. While
    the queue counts as full, the next go straight to ``kick``."""
    exchange = Exchange([None, _nack()])
    connection = FakeConnection()
    broker, kicked = _broker(connection, exchange)
    batches = AmqpBatches(broker, _ack)
    now = [100.0]
    batches.queues.clock = lambda: now[0]
    await batches.send(_spec(), _messages(b"a"), [""], once=False)
    await batches.send(_spec(), _messages(b"b"), [""], once=False)
    await batches.send(_spec(), _messages(b"c"), [""], once=False)
    assert [body for body, _ in exchange.published] == [b"a", b"b"]
    assert kicked == [b"b", b"c"]
    # Then one tries the queue again; the others still kick meanwhile.
    now[0] += amqp_overflow.FULL_SECONDS
    exchange.gate.clear()
    exchange.more.clear()
    sending = asyncio.ensure_future(
        batches.send(_spec(), _messages(b"d", b"e"), ["", ""], once=False)
    )
    await exchange.more.wait()
    await asyncio.sleep(0)  # e's turn
    assert kicked == [b"b", b"c", b"e"]
    exchange.gate.set()
    await sending
    # d was stored: no longer full.
    await batches.send(_spec(), _messages(b"f"), [""], once=False)
    assert [body for body, _ in exchange.published] == [b"a", b"b", b"d", b"f"]
    assert kicked == [b"b", b"c", b"e"]
    # Declared once, on a channel of the write connection closed after:
    # never on the write channel the messages are published on.
    [aside] = connection.channels
    assert aside.closed
    assert broker.write_channel.declared == []  # type: ignore[union-attr]
    # A publish failing otherwise may have been stored: not kicked.
    exchange.answers = [DeliveryError(None, Basic.Return(reply_code=312))]
    with pytest.raises(SendManyError):
        await batches.send(_spec(), _messages(b"g"), [""], once=False)
    assert kicked == [b"b", b"c", b"e"]


async def test_sends_at_once_declare_the_queue_once() -> None:
    """A thousand kiqs at once: one channel opened, one declaration."""
    exchange = Exchange([])
    connection = FakeConnection()
    broker, _ = _broker(connection, exchange)
    batches = AmqpBatches(broker, _ack)
    await asyncio.gather(
        *(batches.send(_spec(), _messages(b"x"), [""], once=False) for _ in range(5))
    )
    [aside] = connection.channels
    assert len(aside.declared) == 1
    assert len(exchange.published) == 5


async def test_without_publisher_confirms_every_message_is_kicked() -> None:
    """A refused publish would be dropped unseen: none is tried."""
    exchange = Exchange([])
    broker, _ = _broker(FakeConnection(), exchange)
    channel = broker.write_channel
    assert isinstance(channel, FakeChannel)
    channel.publisher_confirms = False
    plain: list[BrokerMessage] = []

    async def kick(message: BrokerMessage) -> None:
        plain.append(message)

    broker.kick = kick
    batches = AmqpBatches(broker, _ack)
    await batches.send(_spec(), _messages(b"a", b"b"), ["", ""], once=False)
    assert exchange.published == []
    # Unmarked, as a plain producer's: a worker forwards them.
    assert sorted(one.message for one in plain) == [b"a", b"b"]
    assert all(OVERFLOW_LABEL not in one.labels for one in plain)


def test_a_marked_message_is_batched_where_it_was_read() -> None:
    """One its full queue refused is not forwarded back; others are."""
    batches = AmqpBatches(AioPikaBroker("amqp://nowhere/"), _ack)
    main = ("channel", 1, "main-consumer")
    assert batches.waited(Delivery(b"x", main, sent_at=Overflowed(5.0)))
    assert not batches.waited(Delivery(b"x", main, sent_at=5.0))
    assert not batches.waited(Delivery(b"x", main))


async def test_a_queue_declared_otherwise_is_used_as_it_is_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An earlier version's queue (no bound): the producer declares it
    passively on a new channel; the worker consumes it on a new channel
    with its prefetch; one warning names it."""
    earlier = {"x-queue-type": "quorum", "x-single-active-consumer": True}
    connection = FakeConnection(earlier)
    exchange = Exchange([])
    broker, kicked = _broker(connection, exchange)
    batches = AmqpBatches(broker, _ack, _opens(connection))
    batches.configure([_spec(50)])
    consumed: list[Any] = []

    async def consume(channel: Any, queue: Any, tag: str) -> None:
        consumed.append(channel)

    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        await batches.start(consume, lambda tags: None)
        await batches.send(_spec(50), _messages(b"a"), [""], once=False)
    refused, taken, refused_aside, taken_aside = connection.channels
    for first, second in ((refused, taken), (refused_aside, taken_aside)):
        assert first.closed
        assert second.declared == [("jobs.batch.collect", None, True)]
    assert consumed == [taken]
    assert taken.prefetch == (1 + 1) * 50 + 50
    assert taken_aside.closed
    assert exchange.published == [(b"a", "jobs.batch.collect")]
    assert kicked == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'jobs.batch.collect'" in warnings[0].getMessage()
    assert "deleted" in warnings[0].getMessage()


class Underlay:
    """aiormq's channel: each publish answered as the test says."""

    def __init__(self, answer: BaseException) -> None:
        self.answer = answer

    async def basic_publish(self, body: bytes, **kwargs: Any) -> Any:
        raise self.answer


class Channel:
    def __init__(self, underlay: Underlay) -> None:
        self.underlay = underlay

    async def get_underlay_channel(self) -> Underlay:
        return self.underlay


async def _forward_failing(
    answer: BaseException, caplog: pytest.LogCaptureFixture
) -> logging.LogRecord:
    """Forward one message whose publish fails so; the log record it made."""
    released: list[bytes] = []

    async def channel_of(queue: str) -> Channel:
        return Channel(Underlay(answer))

    async def release(deliveries: Sequence[Delivery]) -> None:
        released.extend(d.data for d in deliveries)

    async def ack(deliveries: Sequence[Delivery]) -> None:
        raise AssertionError("not stored: not acked")

    forwards = Forwards(channel_of, ack, release)
    delivery = Delivery(b"m", (None, 1, "main"), sent_at=None)
    caplog.clear()
    with caplog.at_level(logging.INFO, "taskiq_batching"):
        await forwards.forward([(delivery, "collect", "jobs.batch.collect")], 1.0)
        await forwards.settled()
    assert released == [b"m"]
    now = asyncio.get_running_loop().time()
    assert now < forwards.paused_until <= now + PAUSE_SECONDS
    [record] = [r for r in caplog.records if r.name == "taskiq_batching"]
    return record


async def test_a_full_queue_refusing_a_forward_is_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Expected at saturation: INFO, saying the queue is full; other
    failures stay warnings. Both give the original back and pause."""
    record = await _forward_failing(_nack(), caplog)
    assert record.levelno == logging.INFO
    assert "queue is full" in record.getMessage()
    assert "batches what it reads itself" in record.getMessage()
    record = await _forward_failing(asyncio.TimeoutError(), caplog)
    assert record.levelno == logging.WARNING
    assert "did not store" in record.getMessage()
