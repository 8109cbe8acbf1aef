"""Acks of batched messages: one controller per message, sent many at a time.

Each message has its own ``AckController`` (acked at most once, by
taskiq's ``ack`` or by the lifecycle at its ack type's step), made when
something asks for it (``core.buffer.DeferredAck``); the lifecycle acks
the messages due at one step together, in one round trip of the transport.
What a stopping worker gives back instead (``give_back``) is here too.
"""

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from taskiq.acks import AckController, AcknowledgeType

from taskiq_batching.core.buffer import DeferredAck, Held
from taskiq_batching.error_texts import describe
from taskiq_batching.transports.base import Transport
from taskiq_batching.transports.delivery import Delivery

logger = logging.getLogger("taskiq_batching")


class MessageAck(AckController):
    """A message's one ack controller: acked at most once, alone or in bulk.

    :param transport: acks it.
    :param delivery: the delivery it acknowledges.
    """

    def __init__(self, transport: Transport, delivery: Delivery) -> None:
        self.transport = transport
        self.delivery = delivery
        # taskiq's own constructor runs too: what a newer taskiq sets up there
        # (its PR #640 adds ``_ack_progress``) exists on batched messages, and
        # its ``ack`` (at most once) calls this message's own ack. Not a
        # bound method of this controller: that would be a reference cycle,
        # left to the garbage collector for every message.
        super().__init__(partial(_ack_delivery, transport, delivery))


async def _ack_delivery(transport: Transport, delivery: Delivery) -> None:
    await transport.ack([delivery.handle])


def deferred_acks(transport: Transport) -> DeferredAck:
    """What messages acked through ``transport`` hold until a controller is asked for.

    :param transport: acks the messages.
    :return: the shared state of messages not acked yet.
    """
    return DeferredAck(partial(_message_ack, transport))


def _message_ack(transport: Transport, held: Held) -> MessageAck:
    return MessageAck(transport, held.delivery)


async def ack_due(
    transport: Transport | None, held: Sequence[Held], when: AcknowledgeType
) -> None:
    """Ack, in one round trip, the messages due now and not acked yet.

    A failed ack is logged: unacked, the messages will be delivered again.

    :param transport: acks them (None: messages without acks).
    :param held: messages at one step of their lifecycle.
    :param when: the step: messages of this ack type are due.
    """
    # One pass: the handles are gathered as the controllers are marked.
    handles: list[Any] = []
    for one in held:
        ack = one.ack
        if one.ack_type is not when or ack is None or ack.is_acked:
            continue
        # Marked before the await: never acked twice.
        if type(ack) is DeferredAck:  # no controller made: the shared "acked"
            one.ack = ack.done
            handles.append(one.delivery.handle)
        elif isinstance(ack, MessageAck):
            ack.is_acked = True
            handles.append(ack.delivery.handle)
    if not handles or transport is None:
        return
    try:
        await transport.ack(handles)
    except Exception as exc:
        # Unacked, they will be delivered again: at least once.
        logger.error(
            "taskiq_batching: %d ack(s) failed: %s", len(handles), describe(exc)
        )


async def give_back(
    transport: Transport, deliveries: Sequence[Delivery], what: str
) -> None:
    """Give deliveries not processed back to the broker; a failure is logged.

    :param transport: releases them.
    :param deliveries: they were neither finished nor acked.
    :param what: why they are given back, for the log line.
    """
    if not deliveries:
        return
    try:
        await transport.release(deliveries)
    except Exception as exc:
        logger.error(
            "taskiq_batching: cannot give %d message(s) %s back to the broker: %s",
            len(deliveries),
            what,
            describe(exc),
        )


def unacked(held: Sequence[Held]) -> list[Delivery]:
    """The deliveries of messages not acked (a batch cut off at a stop).

    :param held: messages of batches cut off.
    :return: their deliveries that the broker still holds for this worker.
    """
    return [
        one.delivery
        for one in held
        if one.delivery is not None and not (one.ack is not None and one.ack.is_acked)
    ]
