"""A broker's sending side, as the producer uses it (``kiq_many``, ``kiq``).

The registry makes one per broker for the producer (``sender_for``,
cached in ``waiting.py``); ``BatchingMiddleware.shutdown`` calls its
``shutdown``, which closes what it opened (a Redis sentinel's master
client). Every transport of this package is also a ``Sender``: it sends
what it gives back, and a worker's process may be a producer too.
"""

from collections.abc import Callable, Sequence
from typing import Any

from taskiq import AsyncBroker, BrokerMessage

from taskiq_batching.transports.base import BatchSender
from taskiq_batching.transports.shared import kick_each


class Sender:
    """Sends messages as ``broker.kick`` would, in few round trips.

    A subclass that writes the broker's wire itself (``send_direct``)
    names the shipped ``kick`` functions it stands in for
    (``shipped_kicks``): a broker class that overrides ``kick`` sends
    its own way, one ``kick`` per message (``kick_each``).
    """

    #: The broker the messages go to.
    broker: AsyncBroker
    #: The ``kick`` functions whose writes ``send_direct`` reproduces.
    shipped_kicks: tuple[Callable[..., Any], ...] = ()
    #: Where batched tasks' messages wait in the broker, if they may
    #: (``BatchingMiddleware(wait_in_broker=True)``); None: sent plainly.
    batch_sender: BatchSender | None = None

    async def send(self, messages: Sequence[BrokerMessage]) -> None:
        """Send messages as ``kick`` would, in order, each once.

        :param messages: formatted messages.
        :raises SendManyError: some were not sent (it says which).
        """
        if type(self.broker).kick in self.shipped_kicks:
            await self.send_direct(messages)
        else:  # a subclass of the broker sends its own way
            await kick_each(self.broker, messages)

    async def send_direct(self, messages: Sequence[BrokerMessage]) -> None:
        """Write messages as the shipped ``kick`` does; by default ``kick`` each.

        :param messages: formatted messages.
        """
        await kick_each(self.broker, messages)

    async def shutdown(self) -> None:
        """Close what this sender opened (the broker shuts down); by default nothing."""
