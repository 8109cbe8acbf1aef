"""``kill -9`` of a worker holding messages, on a Redis stream.

Prints what it measured (``-s``).
"""

import time

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import counts, pending, ready, send, wait

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]


async def test_kill_9_of_a_worker_holding_messages_loses_nothing(
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Two workers (batch_size 100, batches of 0.2 s, ``idle_timeout`` 2 s)
    share 2,000 items. One is killed with SIGKILL while it holds messages
    (buffered or in a running batch): the other claims them once idle for
    2 s, with no new traffic, and every item is processed."""
    config = {
        "TB_BROKER": "stream",
        "REDIS_URL": redis_url,
        "TB_BATCH_SIZE": "100",
        "TB_BATCH_TIMEOUT": "0.5",
        "TB_BATCH_DELAY": "0.2",
        "TB_IDLE_MS": "2000",
    }
    broker = await producer(config)
    # Both start at once, each under a name of its own (to tell them apart
    # in the group's consumers, which Redis names in bytes).
    names = {role: f"{queue}-{role}" for role in ("survivor", "victim")}
    survivor, victim = (
        start_worker({**config, "TB_CONSUMER_NAME": names[role]})
        for role in ("survivor", "victim")
    )
    victim_name = names["victim"].encode()
    sent = await send(broker, "collect", list(range(200)))
    # One alone drains 1,800 items in seconds, and a worker can take longer
    # than that to start on a loaded machine: items go one at a time until
    # both were served (a consumer is listed once it was), then the rest at
    # once.
    trickled = 200

    async def both_listed() -> bool:
        nonlocal trickled, sent
        if len(await redis.xinfo_consumers(queue, "taskiq")) == 2:
            return True
        if trickled < 1000:
            sent += await send(broker, "collect", [trickled])
            trickled += 1
        return False

    await wait("both workers reading", both_listed, 30, victim)
    sent += await send(broker, "collect", list(range(trickled, 2000)))

    async def victim_holds() -> bool:
        held = await redis.xinfo_consumers(queue, "taskiq")
        return any(c["name"] == victim_name and c["pending"] > 0 for c in held)

    await wait("the victim holding messages", victim_holds, 20, victim)
    held = sum(
        c["pending"]
        for c in await redis.xinfo_consumers(queue, "taskiq")
        if c["name"] == victim_name
    )
    victim.kill9()
    killed_at = time.monotonic()

    async def everything() -> bool:
        done = (await counts(redis, queue))[0] >= 2000
        return done and await pending(redis, queue) == 0

    await wait("every item processed, none pending", everything, 40, survivor)
    took = time.monotonic() - killed_at
    distinct, total = await counts(redis, queue)
    print(
        f"\nkill -9 of a worker holding {held} entries: all {distinct}/2000 "
        f"processed {took:.2f} s later, {total - distinct} twice, "
        f"{await ready(sent)}/2000 results"
    )
    assert distinct == 2000
    assert survivor.crashes() == 0, survivor.output()
