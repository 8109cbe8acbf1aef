"""Held messages and buffers: envelopes, contexts, timers."""

import asyncio
import dataclasses

import pytest
from taskiq import InMemoryBroker, TaskiqMessage
from taskiq.acks import AckController, AcknowledgeType

from taskiq_batching.core.buffer import Buffer, Envelope, Held, held_as_read
from taskiq_batching.transports.delivery import Delivery

pytestmark = pytest.mark.timeout(10)


def message() -> TaskiqMessage:
    return TaskiqMessage(
        task_id="t1",
        task_name="tasks:insert",
        labels={"ack_type": "when_saved", "_retries": 1},
        labels_types=None,
        args=[{"id": 1}, "tenant"],
        kwargs={"weight": 2},
    )


def test_an_envelope_opens_to_the_same_message() -> None:
    original = message()
    opened = Envelope.of(original).open()
    assert isinstance(opened, TaskiqMessage)
    assert opened.model_dump() == original.model_dump()


def test_a_held_envelope_is_opened_once_and_kept() -> None:
    held = Held(Envelope.of(message()), ack=None, arrived=0.0)
    assert held.task_id == "t1"
    opened = held.taskiq_message()
    assert held.taskiq_message() is opened
    assert held.message is opened


def test_a_held_message_is_used_as_it_is() -> None:
    original = message()
    held = Held(original, ack=None, arrived=0.0)
    assert held.taskiq_message() is original


async def test_a_context_is_made_once_with_the_messages_ack() -> None:
    acks: list[int] = []
    controller = AckController(lambda: acks.append(1))
    held = Held(Envelope.of(message()), ack=controller, arrived=0.0)
    assert held.context is None
    broker = InMemoryBroker()
    context = held.context_for(broker)
    assert context is held.context_for(broker)
    assert context.message is held.taskiq_message()
    assert context.is_ackable
    await context.ack()
    await context.ack()
    assert acks == [1]
    assert controller.is_acked


def test_a_message_without_an_ack_has_a_context_that_cannot_ack() -> None:
    held = Held(Envelope.of(message()), ack=None, arrived=0.0)
    assert not held.context_for(InMemoryBroker()).is_ackable


async def test_closing_a_buffer_stops_its_timer() -> None:
    loop = asyncio.get_running_loop()
    buffer = Buffer("t", (), [], {}, loop.time())
    timer = loop.call_later(3600, lambda: None)
    buffer.timer = timer
    buffer.close()
    assert timer.cancelled()
    assert buffer.timer is None
    buffer.close()  # twice is harmless


def test_a_message_read_is_held_as_the_constructor_would_hold_it() -> None:
    envelope = Envelope.of(message())
    delivery = Delivery(b"m", ("stream", b"1-0"))
    kind = AcknowledgeType.WHEN_EXECUTED
    made = Held(envelope, None, 1.5, ack_type=kind, delivery=delivery)
    read = held_as_read(envelope, None, 1.5, kind, delivery)
    # Every field set (a field added to Held and not here would be unset).
    for field in dataclasses.fields(Held):
        assert getattr(read, field.name) == getattr(made, field.name), field.name
