"""The producer's side of taskiq-redis's stream and list brokers.

A sender holds a client of its own (``RedisClient``: a sentinel broker's
master client is opened here and closed by ``shutdown``), writes the
broker's wire itself (``redis_send``: each message added at most once)
and, with ``wait_in_broker``, sends batched tasks' messages to where
their batches wait (``batch_sender``). It reads nothing: the worker's
side is ``redis_stream.StreamTransport`` and ``redis_list.ListTransport``.
"""

from collections.abc import Sequence
from typing import Any

from taskiq import BrokerMessage
from taskiq_redis import (
    ListQueueBroker,
    ListQueueClusterBroker,
    ListQueueSentinelBroker,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching.transports.redis_batches import StreamBatches
from taskiq_batching.transports.redis_common import RedisClient
from taskiq_batching.transports.redis_list_batches import ListBatches
from taskiq_batching.transports.redis_send import (
    LIST_ONCE,
    STREAM_ONCE,
    chunks,
    send_once,
)
from taskiq_batching.transports.sender import Sender


class RedisSender(Sender):
    """What the stream and list senders share: a client, closed at shutdown.

    :param broker: a taskiq-redis broker (standalone, sentinel or cluster).
    """

    def __init__(self, broker: Any) -> None:
        super().__init__(broker)
        self.broker: Any = broker
        self.client = RedisClient(broker)

    async def shutdown(self) -> None:
        """Close the client if it is this sender's own (the broker shuts down)."""
        await self.client.shutdown()


class StreamSender(RedisSender):
    """Sends for a taskiq-redis stream broker: ``XADD``, each message once.

    :param broker: the stream broker (standalone, sentinel or cluster).
    :param wait_in_broker: batched tasks' messages go to their key streams
        (``redis_batches``), where workers take whole batches.
    """

    shipped_kicks = (
        RedisStreamBroker.kick,
        RedisStreamSentinelBroker.kick,
        RedisStreamClusterBroker.kick,
    )
    batch_sender: StreamBatches | None

    def __init__(self, broker: Any, wait_in_broker: bool = False) -> None:
        super().__init__(broker)
        self.batch_sender = None
        if wait_in_broker:
            # The worker's group and consumer name the key streams' group;
            # a sender never takes, so nothing of its own is in use.
            self.batch_sender = StreamBatches(
                self.client,
                broker.queue_name,
                broker.consumer_group_name,
                broker.consumer_name,
                set(),
                getattr(broker, "idle_timeout", None),
                getattr(broker, "maxlen", None),
            )

    async def send_direct(self, messages: Sequence[BrokerMessage]) -> None:
        """XADD every message, as ``kick`` would, each once (``redis_send``)."""
        broker = self.broker
        trim = "" if broker.maxlen is None else str(broker.maxlen)
        options = ["stream", "~" if broker.approximate else "=", trim]
        parts = chunks(messages, broker.queue_name)
        await send_once(self.client, messages, parts, STREAM_ONCE, options)


class ListSender(RedisSender):
    """Sends for a taskiq-redis list broker: ``LPUSH``, each message once.

    :param broker: the list broker (standalone, sentinel or cluster).
    :param wait_in_broker: batched tasks' messages go to their key lists
        (``redis_list_batches``), where workers take whole batches.
    """

    shipped_kicks = (
        ListQueueBroker.kick,
        ListQueueSentinelBroker.kick,
        ListQueueClusterBroker.kick,
    )
    batch_sender: ListBatches | None

    def __init__(self, broker: Any, wait_in_broker: bool = False) -> None:
        super().__init__(broker)
        self.queue: str = broker.queue_name
        self.batch_sender = None
        if wait_in_broker:
            self.batch_sender = ListBatches(self.client, self.queue)

    async def send_direct(self, messages: Sequence[BrokerMessage]) -> None:
        """LPUSH every message, as ``kick`` would, each once (``redis_send``)."""
        # One LPUSH of many values per chunk pushes them in order.
        parts = chunks(messages, self.queue)
        await send_once(self.client, messages, parts, LIST_ONCE, ["list"])
