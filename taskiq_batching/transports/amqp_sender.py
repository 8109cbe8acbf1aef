"""The producer's side of taskiq-aio-pika's ``AioPikaBroker``.

Messages go out through the broker's own ``kick`` (its publisher
confirms), many at once; with ``wait_in_broker``, batched tasks'
messages are published to their own queues (``batch_sender``,
``amqp_batches.AmqpBatches``). It reads nothing: the worker's side is
``amqp.AmqpTransport``.
"""

from collections.abc import Sequence
from typing import Any

from taskiq import AsyncBroker
from taskiq_aio_pika import AioPikaBroker

from taskiq_batching.transports.amqp_batches import AmqpBatches
from taskiq_batching.transports.sender import Sender


def sender_for(
    broker: AsyncBroker, wait_in_broker: bool | None = None
) -> "Sender | None":
    """The sender for an ``AioPikaBroker`` (None for other brokers).

    :param broker: any broker.
    :param wait_in_broker: as for ``amqp.transport_for``.
    :return: ``AmqpSender`` when the worker reads the broker with
        ``amqp.AmqpTransport``; the plain ``Sender`` (``kick`` each) when
        its class overrides ``listen`` (the worker then reads it with the
        generic transport: no task queues).
    """
    if not isinstance(broker, AioPikaBroker):
        return None
    if type(broker).listen is AioPikaBroker.listen:
        return AmqpSender(broker, wait_in_broker is True)
    return Sender(broker)


async def _not_forwarding(handles: Sequence[Any]) -> None:
    """A sender forwards nothing, so it never acks (``AmqpBatches.forward``)."""
    raise RuntimeError("a producer's sender has no deliveries to ack")


class AmqpSender(Sender):
    """Sends for taskiq-aio-pika's ``AioPikaBroker``: its ``kick``, many at once.

    :param broker: an ``AioPikaBroker`` with the stock ``listen``.
    :param wait_in_broker: batched tasks' messages go to their own queues
        (``amqp_batches.py``), consumed by one worker at a time.
    """

    batch_sender: AmqpBatches | None

    def __init__(self, broker: AioPikaBroker, wait_in_broker: bool = False) -> None:
        super().__init__(broker)
        self.batch_sender = None
        if wait_in_broker:
            self.batch_sender = AmqpBatches(broker, _not_forwarding)
