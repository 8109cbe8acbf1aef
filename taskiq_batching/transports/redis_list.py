"""taskiq-redis's list brokers (standalone, sentinel, cluster), read in chunks.

The same list, the same way round (oldest first), as taskiq-redis's
listener: ``RPOP`` of up to the pump's read size, and a ``BRPOP`` with a
timeout of its own (under redis-py's socket timeout) when the list is
empty. A list forgets a message once popped, so a read in progress is
never cancelled at stop, and deliveries popped but not processed are
pushed back where they were (``release``). There are no acks.

Batched tasks' messages may wait in Redis instead (``batches``, a
``redis_list_batches.ListBatches``): taken as whole batches from their
task's key lists; ``release`` pushes those back to their key's list.

The producer's side is ``redis_sender.ListSender`` (``sender_for``).
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from taskiq import AsyncBroker, BrokerMessage
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
)

from taskiq_batching.transports.consumer import Consumer
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_common import TRANSIENT, RedisClient
from taskiq_batching.transports.redis_give_back import give_back_popped
from taskiq_batching.transports.redis_list_batches import ListBatches, ListEntry
from taskiq_batching.transports.redis_sender import ListSender

logger = logging.getLogger("taskiq_batching")

#: Seconds a ``BRPOP`` on an empty list waits before the worker looks again.
BLOCK_SECONDS = 1
#: Longest wait for a read in progress when the worker stops, in seconds.
STOP_READ_TIMEOUT = 10.0

_LISTENERS = (
    ListQueueBroker.listen,
    ListQueueSentinelBroker.listen,
    ListQueueClusterBroker.listen,
)


def transport_for(
    broker: AsyncBroker, listen: Any = None, wait_in_broker: bool | None = None
) -> "ListTransport | None":
    """The list transport, for taskiq-redis list brokers that listen as shipped.

    :param broker: any broker.
    :param listen: unused (the broker's own listener is replaced).
    :param wait_in_broker: True: batched tasks' messages wait in Redis
        (``redis_list_batches``); False or None (the default: not measured
        with the worker yet, docs/fleet.md): they are read and buffered.
    :return: the transport, or None for other brokers.
    """
    if type(broker).listen in _LISTENERS:
        return ListTransport(broker, wait_in_broker is True)
    return None


def sender_for(
    broker: AsyncBroker, wait_in_broker: bool | None = None
) -> ListSender | None:
    """The list sender, for the brokers ``transport_for`` serves (else None)."""
    if type(broker).listen in _LISTENERS:
        return ListSender(broker, wait_in_broker is True)
    return None


class ListTransport(Consumer[ListEntry | None]):
    """Pops and pushes back for a taskiq-redis list broker.

    :param broker: the list broker (standalone, sentinel or cluster).
    :param wait_in_broker: batched tasks' messages wait in Redis, taken as
        whole batches from ``batches`` (``redis_list_batches``).
    """

    name = "redis-list"
    acknowledges = False
    outstanding = 0

    def __init__(self, broker: Any, wait_in_broker: bool = True) -> None:
        self.broker: Any = broker
        self.client = RedisClient(broker)
        self.queue: str = broker.queue_name
        #: Where batched tasks' messages wait (None: read and buffered).
        self.list_batches: ListBatches | None = None
        if wait_in_broker:
            self.list_batches = ListBatches(self.client, self.queue)
        self.batches = self.list_batches
        #: Moves a plain producer's batched messages to their key lists (the
        #: worker's ``Forwarder``): stamped with the forward's time.
        self.forwarder = self.list_batches

    async def read(self, limit: int) -> list[Delivery]:
        """Pop up to ``limit`` messages, oldest first; wait a little when empty."""
        redis = self.client.redis
        while True:
            try:
                popped = await redis.rpop(self.queue, limit)
                if not popped:
                    blocked = await redis.brpop([self.queue], timeout=BLOCK_SECONDS)
                    popped = [blocked[1]] if blocked else []
            except TRANSIENT as exc:
                await self.client.pause_after(exc, f"reading {self.queue}")
                continue
            self.client.recovered()
            return [Delivery(data) for data in popped]

    async def interrupt(self, reading: Any) -> list[Delivery]:
        """Wait for the pop in progress: what it popped exists nowhere else."""
        done, _ = await asyncio.wait({reading}, timeout=STOP_READ_TIMEOUT)
        if not done:
            # Only a read stuck retrying a lost server gets here: nothing popped.
            reading.cancel()
            await asyncio.wait({reading})
            return []
        return list(reading.result())

    async def ack(self, handles: Sequence[Any]) -> None:
        """Nothing to ack."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Push popped messages back to the head of their list, in their order.

        Messages taken from a task's key list go back there, with their
        time (``ListBatches.give_back``); the others to the main list.
        """
        taken = [d for d in deliveries if isinstance(d.handle, ListEntry)]
        if taken and self.list_batches is not None:
            await self.list_batches.give_back(taken)
        deliveries = [d for d in deliveries if not isinstance(d.handle, ListEntry)]
        if deliveries:
            # The last pushed is popped first: push the newest first.
            await self.client.redis.rpush(
                self.queue, *[d.data for d in reversed(deliveries)]
            )

    async def requeue(
        self, given: Sequence[tuple[Delivery, BrokerMessage]]
    ) -> list[Delivery]:
        """Push them back where ``kick`` pushes (``redis_give_back``)."""
        return await give_back_popped(self.client.redis, self.queue, given)

    def for_receiver(self, delivery: Delivery) -> bytes:
        """As taskiq-redis's listener yields it: the bytes (a list has no acks)."""
        return delivery.data

    async def close(self) -> None:
        """Close the client if it is this transport's own."""
        await self.client.close()

    async def shutdown(self) -> None:
        """Close the client if it is this transport's own (the broker shuts down)."""
        await self.client.shutdown()
