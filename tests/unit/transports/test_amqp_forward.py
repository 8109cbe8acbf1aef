"""RabbitMQ forwarding: returns before the confirms, settles each original after."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from pamqp.commands import Basic

from taskiq_batching.transports import amqp_forward
from taskiq_batching.transports.amqp_forward import Forwards
from taskiq_batching.transports.batch_source import ForwardingPaused
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery

pytestmark = pytest.mark.timeout(10)


class Underlay:
    """aiormq's channel: each publish waits for a confirm the test gives."""

    def __init__(self) -> None:
        self.published: list[tuple[bytes, str, Any]] = []
        self.confirms: list[asyncio.Future[Any]] = []
        #: Set at each publish.
        self.more = asyncio.Event()

    async def basic_publish(
        self, body: bytes, *, routing_key: str, properties: Any, wait: bool
    ) -> Any:
        self.published.append((body, routing_key, properties))
        confirm: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.confirms.append(confirm)
        self.more.set()
        return await confirm


class Channel:
    def __init__(self, underlay: Underlay) -> None:
        self.underlay = underlay

    async def get_underlay_channel(self) -> Underlay:
        return self.underlay


class Main:
    """The main queue's side: what is acked and given back."""

    def __init__(self) -> None:
        self.acked: list[bytes] = []
        self.released: list[bytes] = []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.acked.extend(d.data for d in deliveries)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(d.data for d in deliveries)


def _setup() -> tuple[Forwards, Underlay, Main]:
    underlay, main = Underlay(), Main()
    channel = Channel(underlay)

    async def channel_of(queue: str) -> Channel:
        return channel

    return Forwards(channel_of, main.ack, main.release), underlay, main


def _moves(*bodies: bytes) -> list[tuple[Delivery, str, str]]:
    return [(Delivery(body, body, sent_at=None), "t", "q.batch.t") for body in bodies]


async def _published(underlay: Underlay, count: int) -> None:
    """Until the publish tasks have written ``count`` messages (no timing)."""
    while len(underlay.confirms) < count:
        underlay.more.clear()
        await underlay.more.wait()


async def test_forward_returns_before_the_confirms_and_acks_after_them() -> None:
    forwards, underlay, main = _setup()
    # Returns at once: the worker reads on while RabbitMQ stores the copies.
    await asyncio.wait_for(forwards.forward(_moves(b"a", b"b"), 123.0), 5)
    await _published(underlay, 2)
    assert main.acked == []  # not before RabbitMQ confirmed the copies
    assert [(body, queue) for body, queue, _ in underlay.published] == [
        (b"a", "q.batch.t"),
        (b"b", "q.batch.t"),
    ]
    properties = underlay.published[0][2]
    assert properties.headers == {"task_name": "t", SENT_AT_LABEL: "123.0"}
    assert properties.delivery_mode == 2  # persistent, as the broker's kick
    for confirm in underlay.confirms:
        confirm.set_result(Basic.Ack())
    await forwards.settled()
    assert main.acked == [b"a", b"b"]
    assert main.released == []
    assert forwards.unconfirmed == 0


async def test_an_unconfirmed_copys_original_goes_back_and_forwards_pause() -> None:
    forwards, underlay, main = _setup()
    await forwards.forward(_moves(b"a", b"b", b"c"), 1.0)
    await _published(underlay, 3)
    underlay.confirms[0].set_result(Basic.Ack())
    underlay.confirms[1].set_result(Basic.Nack())
    underlay.confirms[2].set_exception(ConnectionError("channel closed"))
    await forwards.settled()
    # Stored: acked; the others back to the main queue: nothing lost.
    assert main.acked == [b"a"]
    assert main.released == [b"b", b"c"]
    # For a while the worker batches them itself (the taker's fallback).
    with pytest.raises(ForwardingPaused):
        await forwards.forward(_moves(b"d"), 1.0)
    assert len(underlay.published) == 3


async def test_forwards_wait_for_the_oldest_chunk_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(amqp_forward, "MAX_UNCONFIRMED", 2)
    forwards, underlay, main = _setup()
    await forwards.forward(_moves(b"a", b"b"), 1.0)
    third = asyncio.ensure_future(forwards.forward(_moves(b"c"), 1.0))
    await _published(underlay, 3)
    assert not third.done()  # three would wait for their confirms
    underlay.confirms[0].set_result(Basic.Ack())
    underlay.confirms[1].set_result(Basic.Ack())
    await asyncio.wait_for(third, 5)
    assert main.acked == [b"a", b"b"]
    underlay.confirms[2].set_result(Basic.Ack())
    await forwards.settled()
    assert main.acked == [b"a", b"b", b"c"]


async def test_a_send_time_the_original_had_is_kept() -> None:
    forwards, underlay, _ = _setup()
    delivery = Delivery(b"a", b"a", sent_at=5.5)
    await forwards.forward([(delivery, "t", "q.batch.t")], 9.0)
    await _published(underlay, 1)
    assert underlay.published[0][2].headers[SENT_AT_LABEL] == "5.5"
    underlay.confirms[0].set_result(Basic.Ack())
    await forwards.settled()


async def collect(items: list[int]) -> None: ...


async def test_the_task_queues_forward_returns_before_rabbitmq_confirms() -> None:
    from taskiq_aio_pika import AioPikaBroker, Queue

    from taskiq_batching.core.analysis import analyse
    from taskiq_batching.settings import BatchSettings
    from taskiq_batching.spec import BatchSpec
    from taskiq_batching.transports.amqp_batches import AmqpBatches

    underlay, main = Underlay(), Main()

    class WriteChannel(Channel):
        async def declare_queue(self, name: str, **kwargs: Any) -> str:
            return name

        async def close(self) -> None: ...

    class WriteConnection:
        async def channel(self) -> WriteChannel:
            return WriteChannel(underlay)

    broker = AioPikaBroker("amqp://nowhere/", task_queues=[Queue(name="jobs")])
    broker.write_channel = WriteChannel(underlay)  # type: ignore[assignment]
    broker.write_conn = WriteConnection()  # type: ignore[assignment]
    acked: list[Any] = []

    async def ack(handles: Sequence[Any]) -> None:
        acked.extend(handles)

    batches = AmqpBatches(broker, ack, release=main.release)
    settings = BatchSettings(batch_size=10)
    spec = BatchSpec("collect", settings, analyse("collect", collect), None)
    delivery = Delivery(b"m", "handle", sent_at=None)
    await asyncio.wait_for(batches.forward([(delivery, spec, "")]), 5)
    await _published(underlay, 1)
    assert underlay.published[0][1] == "jobs.batch.collect"
    assert acked == []
    underlay.confirms[0].set_result(Basic.Ack())
    await batches.settled()
    assert acked == ["handle"]


async def test_originals_waiting_for_confirms_hold_no_batch() -> None:
    from collections import Counter

    from taskiq_aio_pika import AioPikaBroker

    from taskiq_batching.transports.amqp_batches import AmqpBatches

    batches = AmqpBatches(AioPikaBroker("amqp://nowhere/", qos=10), _no_ack)
    batches.limits["task"] = 200
    underlay, main = Underlay(), Main()
    channel = Channel(underlay)

    async def channel_of(queue: str) -> Channel:
        return channel

    batches.forwards = Forwards(channel_of, main.ack, main.release, 10)
    moves = [(Delivery(b"m", (None, i, "main"), None), "t", "q") for i in range(4)]
    await batches.forwards.forward(moves, 1.0)
    # The main consumer's 10 read: 4 wait for their copy's confirm. Not
    # full, so the buffers are not flushed for it.
    assert batches.outstanding(Counter({"main": 10, "task": 3}), 10) == 6
    await _published(underlay, 4)
    for confirm in underlay.confirms:
        confirm.set_result(Basic.Ack())
    await batches.forwards.settled()
    assert batches.outstanding(Counter({"main": 10, "task": 3}), 10) == 10
    assert not batches.forwards.by_consumer


async def _no_ack(handles: Sequence[Any]) -> None:
    raise AssertionError("not acked here")


async def test_unconfirmed_forwards_stay_under_half_the_prefetch() -> None:
    underlay, main = Underlay(), Main()
    channel = Channel(underlay)

    async def channel_of(queue: str) -> Channel:
        return channel

    forwards = Forwards(channel_of, main.ack, main.release, prefetch=4)
    await forwards.forward(_moves(b"a", b"b"), 1.0)
    third = asyncio.ensure_future(forwards.forward(_moves(b"c"), 1.0))
    await _published(underlay, 3)
    assert not third.done()  # 3 > 4 // 2
    for confirm in underlay.confirms[:2]:
        confirm.set_result(Basic.Ack())
    await asyncio.wait_for(third, 5)
    underlay.confirms[2].set_result(Basic.Ack())
    await forwards.settled()
    assert main.acked == [b"a", b"b", b"c"]


async def test_settled_gives_up_on_confirms_that_never_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that stops confirming (a blocked publisher) must not hang a
    worker's stop: ``settled`` returns after its grace, saying what is left."""
    forwards, underlay, main = _setup()
    await forwards.forward(_moves(b"a", b"b"), 1.0)
    await _published(underlay, 2)
    await asyncio.wait_for(forwards.settled(timeout=0.01), 5)
    assert main.acked == []  # never acked without a confirm
    assert "confirmed no copy of 2 forwarded message(s)" in caplog.text


async def test_an_original_leaves_the_forwarded_count_as_its_ack_is_sent() -> None:
    """``outstanding`` is the held count less the forwarded one: the ack
    lowers the first at once, so the second must be lowered already, or the
    worker sees its prefetch emptier than it is for a moment."""
    underlay, main = Underlay(), Main()
    seen_at_ack: list[dict[str, int]] = []

    async def channel_of(queue: str) -> Channel:
        return Channel(underlay)

    async def ack(deliveries: Sequence[Delivery]) -> None:
        seen_at_ack.append(dict(forwards.by_consumer))
        await main.ack(deliveries)

    forwards = Forwards(channel_of, ack, main.release)
    moves = [
        (Delivery(body, (None, tag, "ctag"), sent_at=None), "t", "q.batch.t")
        for tag, body in enumerate((b"a", b"b"), start=1)
    ]
    await forwards.forward(moves, 1.0)
    await _published(underlay, 2)
    assert forwards.by_consumer == {"ctag": 2}
    for confirm in underlay.confirms:
        confirm.set_result(Basic.Ack())
    await forwards.settled()
    assert seen_at_ack == [{}]
    assert main.acked == [b"a", b"b"]
