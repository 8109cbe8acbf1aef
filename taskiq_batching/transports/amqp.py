"""taskiq-aio-pika's broker: its own listener, and the channel's prefetch.

An AMQP server stops delivering to a channel while ``qos`` (its prefetch
count) messages are unacked, whatever their task: the worker reads that
budget so that a full budget of buffered messages is flushed at once
rather than waited on.
"""

from typing import Any

from taskiq import AsyncBroker

from taskiq_batching._compat import amqp_prefetch
from taskiq_batching.transports.generic import GenericTransport


def transport_for(broker: AsyncBroker, listen: Any = None) -> GenericTransport:
    """The broker's own listener, with the channel's prefetch known.

    :param broker: an ``AioPikaBroker``.
    :param listen: its own ``listen``.
    :return: the transport.
    """
    return GenericTransport(broker, listen, prefetch=amqp_prefetch(broker))
