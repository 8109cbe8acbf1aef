"""A batched message's ack controller, as the lifecycle makes one per message."""

import gc
import weakref
from collections.abc import Sequence
from typing import Any

import pytest

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker.acks import MessageAck

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
