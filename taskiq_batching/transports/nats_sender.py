"""The producer's side of taskiq-nats's ``PullBasedJetStreamBroker``.

Publishes many messages at once as the broker's ``kick`` would and, with
``wait_in_broker``, batched tasks' messages to their own subjects
(``batch_sender``, ``nats_send.NatsBatchSender``). It reads nothing: the
worker's side is ``nats.NatsTransport``.
"""

import asyncio
from collections.abc import Sequence
from typing import TypeGuard

from taskiq import AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_nats.broker import BaseJetStreamBroker

from taskiq_batching.transports.nats_send import NatsBatchSender
from taskiq_batching.transports.sender import Sender
from taskiq_batching.transports.shared import SEND_CONCURRENCY


def served(broker: AsyncBroker) -> TypeGuard[PullBasedJetStreamBroker]:
    """Whether the worker reads this broker with ``nats.NatsTransport``.

    :param broker: any broker.
    :return: True for a pull-based JetStream broker that listens as shipped.
    """
    shipped = type(broker).listen is PullBasedJetStreamBroker.listen
    return shipped and isinstance(broker, PullBasedJetStreamBroker)


def sender_for(
    broker: AsyncBroker, wait_in_broker: bool | None = None
) -> "NatsSender | None":
    """The JetStream sender, for the brokers the worker reads with ``NatsTransport``.

    :param broker: any broker.
    :param wait_in_broker: as for ``nats.transport_for``.
    :return: the sender, or None for other brokers.
    """
    return NatsSender(broker, wait_in_broker is True) if served(broker) else None


class NatsSender(Sender):
    """Sends for taskiq-nats's ``PullBasedJetStreamBroker``.

    :param broker: the broker.
    :param wait_in_broker: a batched task's messages are published to its
        own subject, where a worker's lease reads them (``nats_lease.py``).
    """

    shipped_kicks = (BaseJetStreamBroker.kick,)
    batch_sender: NatsBatchSender | None

    def __init__(
        self, broker: PullBasedJetStreamBroker, wait_in_broker: bool = False
    ) -> None:
        super().__init__(broker)
        self.broker: PullBasedJetStreamBroker = broker
        self.batch_sender = NatsBatchSender(broker) if wait_in_broker else None

    async def send_direct(self, messages: Sequence[BrokerMessage]) -> None:
        """Publish every message as ``kick`` would, many at once."""
        broker = self.broker
        for start in range(0, len(messages), SEND_CONCURRENCY):
            chunk = messages[start : start + SEND_CONCURRENCY]
            await asyncio.gather(
                *(
                    broker.js.publish(
                        broker.subject, payload=message.message, headers=message.labels
                    )
                    for message in chunk
                )
            )
