"""Bringing back messages a dead worker took but never acked.

taskiq-redis's ``RedisStreamBroker`` claims other consumers' idle entries
(``XAUTOCLAIM``, older than its ``idle_timeout``) only right after a read
that returned new messages: with no new traffic, a crashed worker's
entries wait forever. A worker with ``BatchingMiddleware`` reads streams
with its own reader (``fetch.py``), and claims them on a timer instead,
every ``min(idle_timeout / 2, 10 s)``, so they come back within about
``idle_timeout`` whatever the traffic.

Entries stay pending while they wait in a buffer or run in a batch, so
keep the broker's ``idle_timeout`` above ``batch_timeout`` plus the
longest batch: otherwise another worker may claim and run them again (a
duplicate, never a loss). The worker warns at start when it is not.
"""

import logging
from typing import Any

from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker
from taskiq_redis import RedisStreamBroker

from taskiq_batching.fetch import StreamAck
from taskiq_batching.runner import BatchSpec

logger = logging.getLogger("taskiq_batching")

#: Longest pause between two claims, in seconds.
MAX_RECLAIM_INTERVAL = 10.0


class StreamReclaimer:
    """Claims a ``RedisStreamBroker``'s idle pending entries for this worker.

    :param broker: the stream broker.
    """

    def __init__(self, broker: RedisStreamBroker) -> None:
        self.broker = broker
        self.idle_ms: int = broker.idle_timeout
        #: Seconds between claims: half the idle time, at most 10 s.
        self.interval = min(self.idle_ms / 2000, MAX_RECLAIM_INTERVAL)

    async def claim(self) -> list[AckableMessage]:
        """Take over the entries idle for ``idle_timeout`` ms, one page per stream.

        :return: the claimed messages, ready to be processed and acked.
        """
        broker = self.broker
        claimed: list[AckableMessage] = []
        async with Redis(connection_pool=broker.connection_pool) as redis:
            for stream in (broker.queue_name, *broker.additional_streams):
                reply = await redis.xautoclaim(
                    stream,
                    broker.consumer_group_name,
                    broker.consumer_name,
                    min_idle_time=self.idle_ms,
                    count=broker.unacknowledged_batch_size,
                )
                for entry_id, fields in reply[1]:
                    data = fields.get(b"data") if fields else None
                    if data is None:  # deleted from the stream meanwhile
                        await redis.xack(stream, broker.consumer_group_name, entry_id)
                        continue
                    ack = StreamAck(broker, stream, entry_id)
                    claimed.append(AckableMessage(data=data, ack=ack))
        if claimed:
            logger.warning(
                "taskiq_batching: reclaimed %d message(s) idle for over %d ms "
                "(a worker stopped without acking them)",
                len(claimed),
                self.idle_ms,
            )
        return claimed

    async def own_pending(self, limit: int = 10_000) -> list[AckableMessage]:
        """The entries delivered to this worker and still unacked.

        Meant for shutdown, once every message this worker handled is
        acked: what is left was delivered by a read that was cancelled
        before its reply was handed over, and would otherwise wait for
        ``idle_timeout`` until another worker claims it.

        :param limit: at most this many entries per stream.
        :return: those messages, ready to be processed and acked.
        """
        broker = self.broker
        found: list[AckableMessage] = []
        async with Redis(connection_pool=broker.connection_pool) as redis:
            for stream in (broker.queue_name, *broker.additional_streams):
                # redis-py types this reply loosely: [[stream, [(id, fields)]]]
                reply: Any = await redis.xreadgroup(
                    broker.consumer_group_name,
                    broker.consumer_name,
                    {stream: "0"},
                    count=limit,
                )
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        data = fields.get(b"data") if fields else None
                        if data is None:
                            await redis.xack(
                                stream, broker.consumer_group_name, entry_id
                            )
                            continue
                        found.append(
                            AckableMessage(
                                data=data, ack=StreamAck(broker, stream, entry_id)
                            ),
                        )
        return found

    def check(self, specs: list[BatchSpec]) -> None:
        """Warn when a message could be reclaimed while it is still in use.

        :param specs: the worker's batched tasks.
        """
        for spec in specs:
            if spec.config.batch_timeout is None:
                held = "until its buffer fills (size-only batching)"
            else:
                seconds = spec.config.batch_timeout + (spec.timeout or 0)
                if seconds * 1000 < self.idle_ms:
                    continue
                held = f"for {seconds:g} s or more"
            logger.warning(
                "taskiq_batching: task %s may hold a message %s, but the broker's "
                "idle_timeout=%d ms lets another worker reclaim it meanwhile "
                "(a duplicate run). Keep idle_timeout above batch_timeout plus "
                "the longest batch.",
                spec.task_name,
                held,
                self.idle_ms,
            )


def reclaimer_for(broker: AsyncBroker) -> StreamReclaimer | None:
    """The reclaimer that suits a broker, if it needs one.

    :param broker: the worker's broker.
    :return: a reclaimer for Redis stream brokers, None otherwise.
    """
    if isinstance(broker, RedisStreamBroker):
        return StreamReclaimer(broker)
    return None
