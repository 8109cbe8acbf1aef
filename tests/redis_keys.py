"""Deleting a test's keys from the shared Redis by pattern."""

from redis.asyncio import Redis

#: Keys SCAN looks at per round trip. Redis's default (10) makes a scan of
#: the shared Redis cost one round trip per 10 keys of the whole keyspace,
#: whatever the pattern: with the ~43,000 keys other runs left (results
#: expiring over minutes) a test's clean-up took 4-7 s per scan on a loaded
#: machine and ran one test past its 60 s timeout. 10,000 keys per round
#: trip: a few round trips, each a few milliseconds of the server's time.
SCAN_COUNT = 10_000


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
