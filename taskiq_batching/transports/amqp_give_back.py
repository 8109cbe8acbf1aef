"""Giving read messages back to the tail of their RabbitMQ queue (``Requeue``).

Each message is published again straight to the queue it was consumed
from (the default exchange, the queue's name as routing key: not routed
again by the broker's exchange, not delayed again), persistent, with its
priority, its task_id and task_name headers as taskiq-aio-pika's ``kick``
writes them, and its original send time in the ``batch_sent_at`` header
(so its ``batch_timeout`` counts from the first send). Once the server
confirmed the publish, the delivery is acked. AMQP cannot do both at
once: a worker (or a channel) lost between the two leaves the delivery
unacked, delivered again: that message runs twice, never zero times.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aio_pika import DeliveryMode, Message
from taskiq import BrokerMessage

from taskiq_batching._compat import amqp_priority_label
from taskiq_batching.transports.delivery import SENT_AT_LABEL, Delivery
from taskiq_batching.transports.shared import acked_after_resend


async def republish(
    broker: Any,
    queues: Mapping[str, str],
    given: Sequence[tuple[Delivery, BrokerMessage]],
) -> tuple[list[Delivery], list[Delivery]]:
    """Publish each message again to the queue it came from, concurrently.

    :param broker: the ``AioPikaBroker`` (its write channel).
    :param queues: queue names by consumer tag.
    :param given: the deliveries (handles ``(channel, tag, consumer)``).
    :return: the deliveries published and confirmed (to ack), and the others.
    """
    channel = broker.write_channel
    if channel is None:
        return [], [delivery for delivery, _ in given]

    async def one(delivery: Delivery, message: BrokerMessage) -> None:
        headers: dict[str, Any] = {
            "task_id": message.task_id,
            "task_name": message.task_name,
        }
        if delivery.sent_at is not None:
            headers[SENT_AT_LABEL] = delivery.sent_at
        await channel.default_exchange.publish(
            Message(
                delivery.data,
                headers=headers,
                delivery_mode=DeliveryMode.PERSISTENT,
                priority=_priority(broker, message),
            ),
            routing_key=queues[delivery.handle[2]],
        )

    outcomes = await asyncio.gather(
        *(one(delivery, message) for delivery, message in given),
        return_exceptions=True,
    )
    published: list[Delivery] = []
    kept: list[Delivery] = []
    for (delivery, _), outcome in zip(given, outcomes, strict=True):
        (kept if isinstance(outcome, BaseException) else published).append(delivery)
    return published, kept


async def give_back(
    broker: Any,
    consumers: Sequence[tuple[Any, str]],
    lost: Callable[[Delivery], bool],
    ack: Callable[[Sequence[Any]], Awaitable[None]],
    given: Sequence[tuple[Delivery, BrokerMessage]],
) -> list[Delivery]:
    """Publish each message again to its queue, then ack it (``Requeue``).

    :param broker: the ``AioPikaBroker``.
    :param consumers: ``(queue, consumer tag)`` of the transport's consumers.
    :param lost: whether a delivery's channel closed (the server requeued it).
    :param ack: the transport's ``ack``.
    :param given: the deliveries and their messages.
    :return: the deliveries not published (not acked).
    """
    queues = {tag: queue.name for queue, tag in consumers}
    # A closed channel's deliveries are back in the queue already.
    live = [one for one in given if not lost(one[0])]
    published, kept = await republish(broker, queues, live)
    await acked_after_resend(ack, [delivery.handle for delivery in published])
    return kept


def _priority(broker: Any, message: BrokerMessage) -> int | None:
    """The message's priority label, as ``kick`` reads it (None if not a number)."""
    try:
        return int(message.labels[amqp_priority_label(broker)])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
