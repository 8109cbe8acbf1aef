"""A lost consumer group is created again where nothing sent since is skipped.

Issue 18, item 5: a worker that has not read yet created a lost group
again at ``$`` (the broker's ``consumer_id``): every message sent while
the group was missing was skipped (50 of 50 after a Redis restart
without persistence). On a private ``redis-server``.

The worker reconnects to a restarted Redis within a fraction of a second,
so "sent while the group is missing" is made certain, not raced: the
worker logs in as a Redis user of its own, which the test disables (or
which a restart without persistence forgets) until the messages are
sent; the worker retries in place meanwhile, as when Redis is away.
Prints what it measured (``-s``).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from taskiq import AsyncBroker, AsyncTaskiqTask
from taskiq.exceptions import SendTaskError

from tests.integration.faults.conftest import Producer, StartRedis, StartWorker
from tests.integration.faults.observe import batches, processed_items, send, wait
from tests.integration.faults.redis_server import DOWN, TEST_CLIENT, RedisServer
from tests.integration.workers import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(90)]

#: The Redis user the workers log in as (the test's own clients: ``default``).
WORKER_USER = "tb-worker"
WORKER_PASSWORD = "tb-worker-secret"
#: Reclaims, and refreshes (publishing the fleet's mark), every 1.5 s.
IDLE_MS = 3000


@pytest.fixture
async def server(start_redis: StartRedis) -> RedisServer:
    return await start_redis()


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    """The test's client (retries ~2 s: its connection dies with a restart)."""
    client = Redis.from_url(
        server.url,
        client_name=TEST_CLIENT,
        retry=Retry(ConstantBackoff(0.1), 20),
        retry_on_error=list(DOWN),
    )
    try:
        yield client
    finally:
        await client.aclose()


async def let_workers_in(admin: Redis, allowed: bool) -> None:
    """Enable the workers' Redis user, or disable it and cut its connections."""
    if allowed:
        await admin.acl_setuser(
            WORKER_USER,
            enabled=True,
            reset=True,
            passwords=[f"+{WORKER_PASSWORD}"],
            keys="*",
            channels="*",
            commands=["+@all"],
        )
        return
    await admin.acl_setuser(WORKER_USER, enabled=False)
    await admin.client_kill_filter(user=WORKER_USER)


def settings(server: RedisServer, as_worker: bool) -> dict[str, str]:
    host = f"127.0.0.1:{server.port}"
    login = f"{WORKER_USER}:{WORKER_PASSWORD}@" if as_worker else ""
    return {
        "TB_BROKER": "stream",
        "REDIS_URL": f"redis://{login}{host}/0",
        "TB_BATCH_SIZE": "10",
        "TB_BATCH_TIMEOUT": "0.2",
        "TB_IDLE_MS": str(IDLE_MS),
    }


async def send_retrying(
    broker: AsyncBroker, items: list[int]
) -> list[AsyncTaskiqTask[Any]]:
    """``send``, retried while the producer's pooled connections are dead."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await send(broker, "collect", items)
        except (SendTaskError, *DOWN):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def blocked_reading(admin: Redis, worker: Worker) -> None:
    """Wait until the worker idles in its blocking XREADGROUP."""

    async def blocked() -> bool:
        clients = await admin.client_list(_type="normal")
        return any(
            c["user"] == WORKER_USER and c["cmd"] == "xreadgroup" and "b" in c["flags"]
            for c in clients
        )

    await wait("the worker blocked in XREADGROUP", blocked, 20, worker)


class Settled:
    """The group exists again and holds nothing unread or unacked."""

    def __init__(self, admin: Redis, queue: str) -> None:
        self.admin = admin
        self.queue = queue

    async def __call__(self) -> bool:
        groups = await self.admin.xinfo_groups(self.queue)
        return (
            len(groups) == 1
            and groups[0]["lag"] == 0
            and int(groups[0]["pending"]) == 0
        )


async def test_a_group_lost_with_a_restart_skips_nothing_sent_meanwhile(
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """A worker that has read nothing yet; Redis restarted without
    persistence; 50 messages sent before the worker can reach it (the
    stream is made again by them, with no group). Every one of them is
    processed, once (the old worker created the group at ``$``: 0 of 50)."""
    await let_workers_in(admin, True)
    broker = await producer(settings(server, as_worker=False))
    worker = start_worker(settings(server, as_worker=True))
    await blocked_reading(admin, worker)
    server.stop()
    server.start()  # empty: no stream, no group, no worker user
    await server.wait_ready()
    await send_retrying(broker, list(range(50)))
    assert await admin.xinfo_groups(queue) == []  # sent while the group is missing
    await let_workers_in(admin, True)
    took = await wait("the group settled", Settled(admin, queue), 30, worker)
    counted = processed_items(await batches(admin, queue, "collect"))
    print(
        f"\nRedis restarted empty under a worker that had read nothing: "
        f"{len(counted)}/50 sent meanwhile processed, "
        f"{sum(1 for n in counted.values() if n > 1)} more than once; "
        f"settled {took:.1f} s after the worker could reach Redis"
    )
    assert sorted(counted) == list(range(50))
    assert set(counted.values()) == {1}, counted
    assert worker.crashes() == 0, worker.output()


async def test_a_deleted_group_restarts_at_the_fleets_mark(
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """A first worker processes 20 items (the stream keeps them), then stops.
    A second worker, which has read nothing, finds the group deleted while
    50 more were sent: it creates it again after the last entry the fleet
    read, so the 50 are processed once and the 20 not again (at ``$``: 0
    of 50; at ``0``: the 20 again)."""
    await let_workers_in(admin, True)
    broker = await producer(settings(server, as_worker=False))
    config = settings(server, as_worker=True)
    first = start_worker(config)
    await send(broker, "collect", list(range(20)))
    await wait("the first 20 done", Settled(admin, queue), 30, first)
    first.stop(30)  # it publishes how far it read as it leaves
    second = start_worker(config)
    await blocked_reading(admin, second)
    await let_workers_in(admin, False)
    await admin.xgroup_destroy(queue, "taskiq")
    await send(broker, "collect", list(range(100, 150)))
    assert await admin.xinfo_groups(queue) == []
    await let_workers_in(admin, True)
    await wait("the group settled", Settled(admin, queue), 30, second)
    counted = processed_items(await batches(admin, queue, "collect"))
    again = sorted(item for item, n in counted.items() if n > 1)
    print(
        f"\ngroup deleted under a worker that had read nothing: "
        f"{sum(1 for item in counted if item >= 100)}/50 sent meanwhile "
        f"processed; {len(again)} item(s) ran twice"
    )
    assert sorted(counted) == [*range(20), *range(100, 150)]
    assert again == []
    assert second.crashes() == 0, second.output()
