"""Deleting a test's keys from the shared Redis by pattern."""

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Keys SCAN looks at per round trip. Redis's default (10) makes a scan of
#: the shared Redis cost one round trip per 10 keys of the whole keyspace,
#: whatever the pattern: with the ~43,000 keys other runs left (results
#: expiring over minutes) a test's clean-up took 4-7 s per scan on a loaded
#: machine and ran one test past its 60 s timeout. 10,000 keys per round
#: trip: a few round trips, each a few milliseconds of the server's time.
SCAN_COUNT = 10_000
#: The shared Redis of the tests when ``REDIS_URL`` is not set (the
#: ``redis_url`` fixture's default too; tests/conftest.py cannot import
#: this module, which needs redis: ``.ci/without-redis``).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


async def delete_matching(redis: Redis, *patterns: str) -> int:
    """Delete every key matching one of ``patterns`` (SCAN's glob syntax).

    :return: how many keys were deleted.
    """
    found = [
        key
        for pattern in patterns
        async for key in redis.scan_iter(match=pattern, count=SCAN_COUNT)
    ]
    if not found:
        return 0
    return int(await redis.delete(*found))


def queue_patterns(queue: str) -> tuple[str, ...]:
    """What a test queue's keys look like in Redis (SCAN's glob syntax).

    Every key that starts with the queue's name (its stream or list,
    results, the test's own records, a second queue named after it), with
    or without a hash tag's ``{`` before it (a task's streams where
    batches wait, ``{<queue>:<task>}:...``; the producer's marks,
    ``{<queue>}:...``). A test's queue name is a prefix and ten random hex
    digits: no other test's starts with it, and it holds no glob character.
    """
    return (f"{queue}*", f"{{{queue}*")


def forget_queue(url: str, queue: str) -> int:
    """Delete a test queue's keys (``queue_patterns``) from the Redis at ``url``.

    Keys without a TTL would otherwise stay on the shared Redis after
    every run. Unreachable Redis (a RabbitMQ or NATS test run locally
    without it) has nothing to delete.

    :param url: the Redis.
    :param queue: the test's queue name.
    :return: how many keys were deleted.
    """
    try:
        with SyncRedis.from_url(url, socket_timeout=10) as client:
            found = [
                key
                for pattern in queue_patterns(queue)
                for key in client.scan_iter(match=pattern, count=SCAN_COUNT)
            ]
            return int(client.delete(*found)) if found else 0
    except (RedisConnectionError, RedisTimeoutError):
        return 0
