"""A batched message's ack controller: made when asked for, acked at most once."""

import gc
import weakref
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import InMemoryBroker
from taskiq.acks import AcknowledgeType

from taskiq_batching.core.buffer import Envelope, Held
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import MessageAck, ack_due, deferred_acks, unacked

pytestmark = pytest.mark.timeout(10)


class Transport:
    """What ``MessageAck`` uses of a transport: ``ack``, recorded."""

    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, handles: Sequence[Any]) -> None:
        self.acked.extend(handles)


def test_a_message_ack_is_freed_without_the_garbage_collector() -> None:
    # One per message: a reference cycle would leave every message's
    # controller (and its delivery) to the cyclic collector.
    transport: Any = Transport()
    gc.disable()
    try:
        ack = MessageAck(transport, Delivery(b"m", "handle"))
        freed = weakref.ref(ack)
        del ack
        assert freed() is None
    finally:
        gc.enable()


async def test_taskiqs_ack_acks_the_delivery_once() -> None:
    transport: Any = Transport()
    ack = MessageAck(transport, Delivery(b"m", "handle"))
    await ack.ack()
    await ack.ack()
    assert transport.acked == ["handle"]
    assert ack.is_acked


def held_by(deferred: Any, handle: str) -> Held:
    envelope = Envelope(handle, "collect", {}, [handle], {})
    return Held(envelope, deferred, 0.0, delivery=Delivery(b"m", handle))


async def test_messages_acked_in_bulk_get_no_controller_of_their_own() -> None:
    # One controller per message read would be objects for the garbage
    # collector to count, for nothing: acks in bulk never use them.
    transport: Any = Transport()
    deferred = deferred_acks(transport)
    first, second = held_by(deferred, "a"), held_by(deferred, "b")
    assert first.ack is second.ack is deferred
    when = AcknowledgeType.WHEN_SAVED
    await ack_due(transport, [first, second], when)
    await ack_due(transport, [first, second], when)  # acked at most once
    assert transport.acked == ["a", "b"]
    assert first.ack is second.ack is deferred.done
    assert unacked([first, second]) == []


async def test_a_controller_asked_for_after_the_bulk_ack_is_acked() -> None:
    transport: Any = Transport()
    one = held_by(deferred_acks(transport), "a")
    await ack_due(transport, [one], AcknowledgeType.WHEN_SAVED)
    context = one.context_for(InMemoryBroker())
    assert context.is_ackable
    assert context.is_acked
    await context.ack()  # the task's own ack (BatchInfo.ack): already done
    assert transport.acked == ["a"]


async def test_a_controller_asked_for_first_is_the_one_the_bulk_ack_marks() -> None:
    transport: Any = Transport()
    acked, pending = (held_by(deferred_acks(transport), h) for h in "ab")
    await acked.context_for(InMemoryBroker()).ack()  # a manual ack, first
    assert isinstance(acked.ack, MessageAck)
    assert acked.ack.is_acked
    assert unacked([acked, pending]) == [pending.delivery]
    await ack_due(transport, [acked, pending], AcknowledgeType.WHEN_SAVED)
    assert transport.acked == ["a", "b"]
