"""Giving read messages back to the tail of a JetStream stream (``Requeue``).

Each message is published again to the broker's subject, then acked.
JetStream cannot append and ack at once, so the publish comes first: a
worker that dies between the two leaves the message unacked, delivered
again after ``ack_wait``. Its next give-back publishes it with the same
``Nats-Msg-Id`` (the stream and sequence it was read at), which the
stream drops as a duplicate within its duplicate window (2 minutes by
default): run once. The copy carries the original send time in the
``Tb-Sent-At`` header (the stream's own timestamp is the publish's), so
its ``batch_timeout`` still counts from the first send.

A ``nak`` with a delay was the other way: it keeps the message and its
timestamp, but each one counts a delivery against the consumer's
``max_deliver`` (a message given back often would be dropped), and the
message comes back after a timer, not behind what was queued meanwhile.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_pull import SENT_AT
from taskiq_batching.transports.shared import acked_after_resend


async def give_back(
    broker: Any,
    ack: Callable[[Sequence[Any]], Awaitable[None]],
    given: Sequence[tuple[Delivery, BrokerMessage]],
) -> list[Delivery]:
    """Publish each message again to the broker's subject, then ack it (``Requeue``).

    :param broker: the JetStream broker.
    :param ack: the transport's ``ack``.
    :param given: the deliveries and their messages.
    :return: the deliveries not published (not acked).
    """
    published, kept = await republish(broker, given)
    await acked_after_resend(ack, [delivery.handle for delivery in published])
    return kept


async def republish(
    broker: Any, given: Sequence[tuple[Delivery, BrokerMessage]]
) -> tuple[list[Delivery], list[Delivery]]:
    """Publish each message again to the broker's subject, concurrently.

    :param broker: the JetStream broker (its ``js``, subject and stream).
    :param given: the deliveries (handles ``nats_pull.Unsettled``).
    :return: the deliveries published (to ack), and the others.
    """

    async def one(delivery: Delivery) -> None:
        headers = {
            "Nats-Msg-Id": f"{broker.stream_name}-back-{delivery.handle.sequence}"
        }
        if delivery.sent_at is not None:
            headers[SENT_AT] = repr(delivery.sent_at)
        await broker.js.publish(broker.subject, delivery.data, headers=headers)

    outcomes = await asyncio.gather(
        *(one(delivery) for delivery, _ in given), return_exceptions=True
    )
    published: list[Delivery] = []
    kept: list[Delivery] = []
    for (delivery, _), outcome in zip(given, outcomes, strict=True):
        (kept if isinstance(outcome, BaseException) else published).append(delivery)
    return published, kept
