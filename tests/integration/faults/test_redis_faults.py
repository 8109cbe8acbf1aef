"""Redis faults under a real ``taskiq worker``, on a private ``redis-server``.

The server is started by the test on a free loopback port, so restarting
it, deleting its keys or changing its users never touches the shared Redis.
The worker is never restarted by a test: "the same process" is checked by
the pid its batches record and by the absence of taskiq's crash line
(``Process worker-0:``). Every test prints what it measured (``-s``).
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

from taskiq_batching import batch_task
from tests.integration.faults.conftest import Producer, StartRedis, StartWorker
from tests.integration.faults.observe import (
    batches,
    counts,
    log_lines,
    pending,
    ready,
    results,
    send,
    wait,
)
from tests.integration.faults.redis_server import DOWN, TEST_CLIENT, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]

#: Seconds within which a worker must process items sent after a fault.
RECOVERY_BUDGET = 15.0


@pytest.fixture
async def server(start_redis: StartRedis) -> RedisServer:
    return await start_redis()


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    """The test's own client of the private Redis (named; retries ~2 s, so
    that a pooled connection killed by a restart is replaced)."""
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


async def send_retrying(
    broker: AsyncBroker, task: str, items: list[int]
) -> list[AsyncTaskiqTask[Any]]:
    """``send``, retried while the producer's pooled connections are dead."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await send(broker, task, items)
        except (SendTaskError, *DOWN):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def pids(redis: Redis, queue: str) -> set[int]:
    """The pids of the processes that ran batches."""
    return {record["pid"] for record in await batches(redis, queue)}


def stream_settings(server: RedisServer, **more: Any) -> dict[str, str]:
    return {
        "TB_BROKER": "stream",
        "REDIS_URL": server.url,
        "TB_BATCH_SIZE": "10",
        "TB_BATCH_TIMEOUT": "0.2",
        # Reclaims every 1.5 s: the sweep for dead consumers' entries runs
        # while the stream or its group is missing, too.
        "TB_IDLE_MS": "3000",
        **{key: str(value) for key, value in more.items()},
    }


@pytest.mark.parametrize(
    "fault",
    [
        "restart-empty",
        "stream-deleted",
        "group-deleted",
    ],
)
async def test_worker_goes_on_after_its_stream_or_group_is_lost(
    fault: str,
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 3: Redis restarted without persistence, the stream deleted, or
    its consumer group destroyed, under a running worker. Items sent after
    the fault are processed within seconds by the same worker process (the
    old worker processed none of them)."""
    config = stream_settings(server)
    broker = await producer(config)  # creates the group, once
    worker = start_worker(config)
    await results(await send(broker, "collect", list(range(20))), 20, "before")
    before = await pids(admin, queue)

    async def blocked() -> bool:
        clients = await admin.client_list(_type="normal")
        return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)

    # The fault lands while the idle worker waits in its blocking read.
    await wait("the worker blocked in XREADGROUP", blocked, 10, worker)
    if fault == "restart-empty":
        server.stop()
        server.start()
        await server.wait_ready()
        assert not await admin.exists(f"{queue}:batches")  # nothing was kept
    elif fault == "stream-deleted":
        await admin.delete(queue)
    else:
        await admin.xgroup_destroy(queue, "taskiq")
    began = time.monotonic()
    # The producer does not create the group again: the worker must.
    sent = await send_retrying(broker, "collect", list(range(100, 120)))
    values = await results(sent, RECOVERY_BUDGET, f"after {fault}")
    took = time.monotonic() - began
    after = await pids(admin, queue) - (set() if fault == "restart-empty" else before)
    print(
        f"\n{fault}: 20/20 items sent after the fault processed in {took:.2f} s; "
        f"worker pids before {sorted(before)}, after {sorted(after)}; "
        f"crash lines: {worker.crashes()}"
    )
    for item, value in zip(range(100, 120), values, strict=True):
        assert not value.is_err, value.error
        assert item in value.return_value
    assert after <= before, "another process ran the batches"
    assert worker.crashes() == 0, worker.output()
    assert worker.process.poll() is None

    async def acked() -> bool:
        return await pending(admin, queue) == 0

    await wait("every entry acked", acked, 10, worker)


async def test_error_lines_show_the_text_of_redis_errors(
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 12: redis-py 8's exceptions hide their text in ``repr``
    (``server:ResponseError``); the worker's log lines about a missing
    consumer group show it (``NOGROUP ...``)."""
    config = stream_settings(server)
    broker = await producer(config)
    worker = start_worker(config)
    await results(await send(broker, "collect", [1]), 20, "before")
    await admin.xgroup_destroy(queue, "taskiq")

    def about_it() -> list[str]:
        return [
            line
            for line in log_lines(worker)
            if "taskiq_batching" in line
            and any(word in line for word in ("ResponseError", "NOGROUP", "group"))
        ]

    async def logged() -> bool:
        return bool(about_it())

    await wait("a log line about the lost group", logged, RECOVERY_BUDGET, worker)
    lines = about_it()
    print("\n" + "\n".join(line.splitlines()[0][:300] for line in lines))
    assert any("NOGROUP" in line for line in lines), lines
    for line in lines:
        first = line.splitlines()[0]
        assert "server:ResponseError" not in first or "NOGROUP" in first, first


@pytest.mark.parametrize("kind", ["stream", "list"])
async def test_kiq_many_when_the_redis_user_may_not_run_scripts(
    kind: str,
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 11: an ACL user without EVAL/EVALSHA (no ``@scripting``):
    ``kiq_many`` still sends every message, and a worker logged in as the
    same user processes them."""
    await admin.acl_setuser(
        "app",
        enabled=True,
        passwords=["+secret"],
        categories=["+@all", "-@scripting"],
        keys=["*"],
        channels=["*"],
    )
    url = f"redis://app:secret@127.0.0.1:{server.port}/0"
    config = {"TB_BROKER": kind, "REDIS_URL": url, "TB_BATCH_TIMEOUT": "0.2"}
    broker = await producer(config)

    @batch_task(broker, task_name="collect", batch_size=100, batch_timeout=0.2)
    async def collect(items: list[int]) -> list[int]:
        return items

    try:
        sent = await collect.kiq_many(range(500))
    except Exception as exc:
        pytest.fail(f"kiq_many failed: {exc!r} (cause: {exc.__cause__!r})")
    queued = await (admin.xlen(queue) if kind == "stream" else admin.llen(queue))
    assert queued == 500
    worker = start_worker(config)
    values = await results(sent, 30, "the worker, as the same user")
    assert {item for v in values for item in v.return_value} == set(range(500))
    print(f"\n{kind}: kiq_many of 500 as a user without scripts: {queued} queued")
    assert worker.crashes() == 0, worker.output()


async def test_idle_list_worker_logs_nothing(
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 14: a ``ListQueueBroker`` worker idle for 4 s (past the 2 s
    socket timeout its URL sets (redis-py's default is 5 s) from its blocked
    read, with 2 s to spare: a read that outlasts it logs its
    ``TimeoutError`` then) logs no warning or error but the one at start
    about lists having no acks, and still takes a message after."""
    socket_timeout_s = 2.0  # shorter than redis-py's 5 s: a shorter watch
    url = f"{server.url}?socket_timeout={socket_timeout_s}"
    config = {"TB_BROKER": "list", "REDIS_URL": url}
    worker = start_worker(config)

    async def reading() -> bool:
        clients = await admin.client_list(_type="normal")
        return any(client["cmd"] in ("brpop", "blpop") for client in clients)

    await wait("the worker blocked in its read", reading, 15, worker)
    idle = socket_timeout_s + 2.0
    deadline = time.monotonic() + idle

    def complaints() -> list[str]:
        return [
            line
            for line in log_lines(worker)
            if "does not acknowledge messages" not in line
        ]

    while time.monotonic() < deadline:  # an observation window, failing early
        assert not complaints(), complaints()
        await asyncio.sleep(0.5)
    broker = await producer(config)
    (value,) = await results(await send(broker, "echo", [7]), 10, "after idling")
    print(
        f"\nidle list worker, {idle:g} s: no warning or error; then echo -> "
        f"{value.return_value}; crash lines: {worker.crashes()}"
    )
    assert value.return_value == 7
    assert not complaints(), complaints()
    assert worker.crashes() == 0, worker.output()


async def kill_worker_connections(admin: Redis) -> int:
    """CLIENT KILL every connection not opened by the test (named): the worker's."""
    victims = [
        client["id"]
        for client in await admin.client_list(_type="normal")
        if client["name"] != TEST_CLIENT
    ]
    for client_id in victims:
        await admin.client_kill_filter(_id=client_id)
    return len(victims)


def load_settings(server: RedisServer) -> dict[str, str]:
    """1,000 items at 100 per batch of 0.2 s: faults land mid-batch."""
    return stream_settings(
        server, TB_BATCH_SIZE=100, TB_BATCH_TIMEOUT=0.5, TB_BATCH_DELAY=0.2
    )


async def test_worker_connections_killed_under_load_and_idle(
    server: RedisServer,
    admin: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """1,000 queued items; every connection of the worker (reads, batches'
    own writes, results, acks) is killed twice under load and once while it
    idles in its read; then 100 more are sent. Every item is processed,
    nothing stays pending (an ack cut off comes back after idle_timeout,
    3 s), and the worker process is never restarted."""
    config = load_settings(server)
    # The producer's connections are named, so that they survive the kills.
    broker = await producer(
        {**config, "REDIS_URL": f"{server.url}?client_name={TEST_CLIENT}"}
    )
    sent = await send(broker, "collect", list(range(1000)))
    worker = start_worker(config)
    kills: list[tuple[str, int]] = []
    for point in (300, 600):

        async def reached(point: int = point) -> bool:
            return (await counts(admin, queue))[0] >= point

        await wait(f"{point} processed", reached, 30, worker)
        kills.append(("load", await kill_worker_connections(admin)))

    async def idle() -> bool:
        done = (await counts(admin, queue))[0] >= 1000
        clients = await admin.client_list(_type="normal")
        return done and any(
            c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients
        )

    await wait("all 1,000 processed, the worker idle", idle, 30, worker)
    kills.append(("idle", await kill_worker_connections(admin)))
    sent += await send(broker, "collect", list(range(1000, 1100)))

    async def everything() -> bool:
        return (await counts(admin, queue))[0] >= 1100 and await pending(
            admin, queue
        ) == 0

    took = await wait("every item processed, none pending", everything, 30, worker)
    distinct, total = await counts(admin, queue)
    with_result = await ready(sent)
    print(
        f"\nCLIENT KILL x{len(kills)} (when, connections): {kills}; {distinct}/1100 "
        f"processed, {total - distinct} twice, {with_result}/1100 results, last "
        f"entry acked {took:.2f} s after the idle kill; crash lines: "
        f"{worker.crashes()}"
    )
    assert distinct == 1100
    assert worker.crashes() == 0, worker.output()
    assert worker.stop(timeout=20) < 20
    assert worker.process.returncode == 0, worker.output()


async def test_redis_restarted_with_persistence_mid_run(
    start_redis: StartRedis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """1,000 queued items; Redis (append-only, fsync always) is stopped and
    started again on the same port once 300 are processed. Every item is
    processed, nothing stays pending, the worker process is never
    restarted."""
    server = await start_redis(persistent=True)
    admin = Redis.from_url(
        server.url,
        client_name=TEST_CLIENT,
        retry=Retry(ConstantBackoff(0.1), 20),
        retry_on_error=list(DOWN),
    )
    try:
        config = load_settings(server)
        broker = await producer(config)
        sent = await send(broker, "collect", list(range(1000)))
        worker = start_worker(config)

        async def three_hundred() -> bool:
            return (await counts(admin, queue))[0] >= 300

        await wait("300 processed", three_hundred, 30, worker)
        stopped = time.monotonic()
        server.stop()
        server.start()
        await server.wait_ready()
        down = time.monotonic() - stopped

        async def everything() -> bool:
            try:
                done = (await counts(admin, queue))[0] >= 1000
                return done and await pending(admin, queue) == 0
            except DOWN:
                return False

        took = await wait("every item processed, none pending", everything, 40, worker)
        distinct, total = await counts(admin, queue)
        with_result = await ready(sent)
        print(
            f"\nRedis restarted ({down:.2f} s down): all {distinct}/1000 processed "
            f"{took:.2f} s after it was back, {total - distinct} twice, "
            f"{with_result}/1000 results; crash lines: {worker.crashes()}"
        )
        assert distinct == 1000
        assert worker.crashes() == 0, worker.output()
    finally:
        await admin.aclose()
