"""A broker's sending side, as the producer uses it (``kiq_many``, ``kiq``).

The registry makes one per broker for the producer (``sender_for``,
cached in ``waiting.py``); ``BatchingMiddleware.shutdown`` calls its
``shutdown``, which closes what it opened (a Redis sentinel's master
client). Each broker module's sender subclasses ``Sender`` (made without
I/O); the worker's reading side is apart (``consumer.Consumer``) and
never sends through a ``Sender``: it forwards and gives back with its
own ``forwarder`` and ``requeue``. ``Sender(broker)`` itself is the
generic sender: it ``kick``s each message.
"""

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from taskiq import AsyncBroker, BrokerMessage

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.shared import kick_each


class BatchSender(Protocol):
    """Sends a producer's messages of batched tasks to where their batches wait.

    A ``Sender`` that can exposes one as its ``batch_sender`` attribute
    (``None``: ``kiq`` and ``kiq_many`` send the plain way); with
    ``BatchingMiddleware(wait_in_broker=True)`` the producer routes a
    batched task's messages through it (``waiting.py``).
    """

    def serves(self, spec: BatchSpec) -> bool:
        """Whether this task's messages wait in the broker (else: sent plainly)."""

    async def send(
        self,
        spec: BatchSpec,
        messages: Sequence[BrokerMessage],
        keys: Sequence[str],
        once: bool,
    ) -> None:
        """Send one task's messages, each to where its key's batches wait.

        :param spec: the batched task.
        :param messages: its messages, in order.
        :param keys: each message's ``broker_key``.
        :param once: each at most once, whatever retries the send
            (``kiq_many``: a failure raises ``SendManyError``).
        """


class Sender:
    """Sends messages as ``broker.kick`` would, in few round trips.

    A subclass that writes the broker's wire itself (``send_direct``)
    names the shipped ``kick`` functions it stands in for
    (``shipped_kicks``): a broker class that overrides ``kick`` sends
    its own way, one ``kick`` per message (``kick_each``).

    :param broker: the broker the messages go to.
    """

    #: The broker the messages go to.
    broker: AsyncBroker
    #: The ``kick`` functions whose writes ``send_direct`` reproduces.
    shipped_kicks: tuple[Callable[..., Any], ...] = ()
    #: Where batched tasks' messages wait in the broker, if they may
    #: (``BatchingMiddleware(wait_in_broker=True)``); None: sent plainly.
    batch_sender: BatchSender | None = None

    def __init__(self, broker: AsyncBroker) -> None:
        self.broker = broker

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
