"""Reading many messages per round trip from taskiq-redis's list broker.

taskiq-redis's ``ListQueueBroker.listen`` does one ``BRPOP`` (and builds
one client) per message, which caps a worker at about 2,000 messages/s
whatever happens after the fetch. A worker with ``BatchingMiddleware``
reads the same list the same way round (oldest first) but takes up to
``LIST_FETCH_COUNT`` messages per ``RPOP``, and blocks in ``BRPOP`` only
when the list is empty. Messages are still removed when read (the list
broker has no acks), as before.
"""

from collections.abc import AsyncGenerator, Callable

from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker
from taskiq_redis import ListQueueBroker

#: Messages taken per round trip from a non-empty list.
LIST_FETCH_COUNT = 100


def listener_for(
    broker: AsyncBroker,
    default: Callable[[], AsyncGenerator[bytes | AckableMessage, None]],
) -> Callable[[], AsyncGenerator[bytes | AckableMessage, None]]:
    """The listener the worker should read a broker with.

    :param broker: the worker's broker.
    :param default: the broker's own ``listen``.
    :return: a bulk list reader for ``ListQueueBroker`` (exactly that
        class: a subclass may listen differently), else ``default``.
    """
    if type(broker) is ListQueueBroker:
        return lambda: _list_listener(broker)
    return default


async def _list_listener(broker: ListQueueBroker) -> AsyncGenerator[bytes, None]:
    async with Redis(connection_pool=broker.connection_pool) as redis:
        while True:
            # redis-py types these replies loosely: bytes, as the pool decodes none.
            popped: list[bytes] | None = await redis.rpop(  # type: ignore[assignment]
                broker.queue_name,
                LIST_FETCH_COUNT,
            )
            if popped:
                for data in popped:
                    yield data
                continue
            blocked: list[bytes] | None = await redis.brpop(  # type: ignore[assignment]
                [broker.queue_name],
            )
            if blocked:
                yield blocked[1]
