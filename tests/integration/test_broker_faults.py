"""Broker faults under a real worker: Redis connections killed, Redis restarted.

Both tests run against a private ``redis-server`` on a free loopback port,
so that the kills and the restart never touch the shared Redis. It persists
with an append-only file, fsynced at every write: a restart keeps the
stream, its consumer group, its pending entries and the items recorded.

The worker runs tests/integration/retry_app.py: worker_app.py plus a retry
middleware, because the batch function's own Redis write fails too when
its connection dies. Every test prints what it measured (``-s`` shows it).
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import AsyncBroker
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.task import AsyncTaskiqTask

from tests.integration.worker_app import make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REDIS_SERVER = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
HAVE_REDIS_SERVER = REDIS_SERVER.exists()
#: The name of every connection the test opens; the worker's are unnamed.
TEST_CLIENT = "tb-test"
#: What a Redis call raises when its connection was killed or Redis is down.
DOWN = (RedisConnectionError, OSError)
ITEMS = 3000
SETTINGS: dict[str, str] = {
    "TB_BROKER": "stream",
    "TB_SERIALIZER": "json",
    "TB_BATCH_SIZE": "100",
    "TB_BATCH_TIMEOUT": "0.5",
    "TB_XREAD_BLOCK_MS": "500",
    # Entries left unacked (a failed XACK, a dead worker child) come back
    # after 3 s, claimed by the worker's reclaimer.
    "TB_IDLE_MS": "3000",
    "TB_BATCH_DELAY": "0.3",  # batches take time: faults land mid-batch
}


class RedisServer:
    """A private, restartable ``redis-server`` with append-only persistence."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--logfile",
                str(self.directory / f"redis-{self.starts}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float) -> None:
        """Wait until it answers PING (it has loaded its append-only file)."""

        async def answers() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log()
            client = Redis.from_url(self.url, client_name=TEST_CLIENT)
            try:
                return bool(await client.ping())
            except DOWN:  # refused, or still loading (BusyLoadingError)
                return False
            finally:
                await client.aclose()

        await eventually(answers, timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM: Redis fsyncs its append-only file and exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        logs = sorted(self.directory.glob("redis-*.log"))
        return "".join(path.read_text(errors="replace")[-2000:] for path in logs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if not HAVE_REDIS_SERVER:
        reason = f"{REDIS_SERVER} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI needs it")
        pytest.skip(reason)
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        await server.wait_ready(10)
        yield server
    finally:
        server.kill()


@pytest.fixture
def worker(private_redis: RedisServer, queue: str, tmp_path: Path) -> Iterator[Worker]:
    env = {**SETTINGS, "REDIS_URL": private_redis.url, "TB_QUEUE": queue}
    started = Worker(
        env, tmp_path / "worker.log", app="tests.integration.retry_app:broker"
    )
    try:
        yield started
    finally:
        started.kill()


@pytest.fixture
async def inspector(private_redis: RedisServer) -> AsyncIterator[Redis]:
    """The test's own client of the private Redis (named, so never killed).

    It retries for up to ~2 s: after a restart its pooled connection is dead.
    """
    client = Redis.from_url(
        private_redis.url,
        client_name=TEST_CLIENT,
        retry=Retry(ConstantBackoff(0.1), 20),
        retry_on_error=[RedisConnectionError, OSError],
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def producer(private_redis: RedisServer, queue: str) -> AsyncIterator[Any]:
    """A kicker of the worker's batched task, with named connections."""
    broker: AsyncBroker = make_broker(
        f"{private_redis.url}?client_name={TEST_CLIENT}", "stream", queue, "json"
    )
    await broker.startup()  # the consumer group exists before the first send
    try:
        yield AsyncKicker("collect", broker, {})
    finally:
        await broker.shutdown()


async def counts(redis: Redis, queue: str) -> tuple[int, int]:
    """(distinct items processed, processings in all)."""
    distinct = await redis.scard(f"{queue}:items")
    total = int(await redis.get(f"{queue}:processed") or 0)
    return distinct, total


async def entries_read(redis: Redis, queue: str) -> int:
    """How many stream entries XREADGROUP has delivered to the group."""
    (group,) = await redis.xinfo_groups(queue)
    return int(group["entries-read"] or 0)


async def state(redis: Redis, queue: str) -> dict[str, Any]:
    """What the test observes, for its failure messages."""
    distinct, total = await counts(redis, queue)
    return {
        "distinct": distinct,
        "total": total,
        "stream": await redis.xlen(queue),
        "pending": (await redis.xpending(queue, "taskiq"))["pending"],
        "consumers": [
            (c["name"][:8], c["pending"], c["idle"])
            for c in await redis.xinfo_consumers(queue, "taskiq")
        ],
    }


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    redis: Redis,
    queue: str,
    worker: Worker,
) -> float:
    """``eventually(check)`` that tolerates Redis being down; return seconds."""
    started = time.monotonic()

    async def holds() -> bool:
        try:
            return await check()
        except DOWN:
            return False

    try:
        await eventually(holds, timeout)
    except pytest.fail.Exception:
        try:
            seen: Any = await state(redis, queue)
        except DOWN as exc:
            seen = f"Redis unreachable: {exc!r}"
        pytest.fail(f"{what}: not within {timeout} s; {seen}\n{worker.output()}")
    return time.monotonic() - started


async def kill_worker_connections(redis: Redis) -> set[str]:
    """CLIENT KILL every connection the test did not open: the worker's."""
    victims = {
        client["id"]
        for client in await redis.client_list(_type="normal")
        if client["name"] != TEST_CLIENT
    }
    for client_id in victims:
        await redis.client_kill_filter(_id=client_id)
    return victims


async def blocked_readers(redis: Redis) -> set[str]:
    """The connections waiting in a blocking XREADGROUP: an idle worker's."""
    return {
        client["id"]
        for client in await redis.client_list(_type="normal")
        if client["cmd"] == "xreadgroup" and "b" in client["flags"]
    }


async def missing_results(tasks: list[AsyncTaskiqTask[Any]]) -> int:
    """How many sent messages have no result stored under their task_id."""
    return sum([not await task.is_ready() for task in tasks])


async def test_worker_connections_killed_mid_run(
    inspector: Redis,
    queue: str,
    producer: AsyncKicker[Any, Any],
    worker: Worker,
) -> None:
    """Two waves of 1,500 items; CLIENT KILL of every worker connection twice
    under load and once idle per wave. Connections are killed by id: the
    test's own are named ``tb-test`` and survive (``CLIENT KILL TYPE normal
    SKIPME yes`` would also kill the producer's)."""
    tasks: list[AsyncTaskiqTask[Any]] = []
    # (kind, items processed at the kill, connections killed, seconds until
    # the worker reads the stream again)
    kills: list[tuple[str, int, int, float]] = []

    async def processed_at_least(target: int) -> None:
        async def check() -> bool:
            return (await counts(inspector, queue))[0] >= target

        await wait_for(f"{target} processed", check, 60, inspector, queue, worker)

    wave = ITEMS // 2
    for start in (0, wave):
        for item in range(start, start + wave):  # thousands in flight at once
            tasks.append(await producer.kiq(item))
        # Under load: connections busy with reads, batches, results, acks.
        for point in (start + wave // 5, start + 3 * wave // 5):
            await processed_at_least(point)
            read_before = await entries_read(inspector, queue)
            killed = await kill_worker_connections(inspector)

            async def reads_again(before: int = read_before) -> bool:
                return await entries_read(inspector, queue) > before

            took = await wait_for(
                "reading again", reads_again, 30, inspector, queue, worker
            )
            kills.append(("load", point, len(killed), round(took, 2)))
        # Idle: the listener's connection dies in the middle of its read.
        await processed_at_least(start + wave)

        async def idle() -> bool:
            return bool(await blocked_readers(inspector))

        await wait_for("idle", idle, 30, inspector, queue, worker)
        killed = await kill_worker_connections(inspector)

        async def blocked_again(killed: set[str] = killed) -> bool:
            return bool(await blocked_readers(inspector) - killed)

        took = await wait_for(
            "reading again", blocked_again, 30, inspector, queue, worker
        )
        kills.append(("idle", start + wave, len(killed), round(took, 2)))

    async def none_pending() -> bool:
        return int((await inspector.xpending(queue, "taskiq"))["pending"]) == 0

    unacked = await wait_for("no pending", none_pending, 30, inspector, queue, worker)
    distinct, total = await counts(inspector, queue)
    no_result = await missing_results(tasks)
    took = worker.stop(timeout=20)
    print(
        f"\nCLIENT KILL x{len(kills)} (kind, processed, connections killed, "
        f"s until it reads again): {kills}; {distinct}/{ITEMS} items, "
        f"{total - distinct} duplicate processing(s), last pending entry acked "
        f"{unacked:.2f} s after the last item, {no_result} result(s) missing, "
        f"worker child restarted {worker.crashes()} time(s), SIGTERM exit in "
        f"{took:.2f} s",
    )
    assert distinct == ITEMS
    assert worker.process.returncode == 0, worker.output()


async def test_redis_restarted_mid_run(
    private_redis: RedisServer,
    inspector: Redis,
    queue: str,
    producer: AsyncKicker[Any, Any],
    worker: Worker,
) -> None:
    """3,000 items, at most 1,000 unprocessed; Redis is stopped (SIGTERM) once
    1,000 are processed, kept down 3 s and started again on the same port
    and directory. The producer retries the sends that fail meanwhile."""
    tasks: list[AsyncTaskiqTask[Any]] = []
    send_failures = 0

    async def send_all() -> None:
        """Send every item, at most 1000 unprocessed; retry failed sends."""
        nonlocal send_failures
        for item in range(ITEMS):
            while True:
                try:
                    if len(tasks) - (await counts(inspector, queue))[0] < 1000:
                        tasks.append(await producer.kiq(item))
                        break
                except (SendTaskError, *DOWN):  # kiq wraps the broker's error
                    send_failures += 1
                await asyncio.sleep(0.01)  # backlog full or Redis down: poll again

    sending = asyncio.create_task(send_all())
    try:

        async def past_1000() -> bool:
            return (await counts(inspector, queue))[0] >= 1000

        await wait_for("progress", past_1000, 60, inspector, queue, worker)
        stream_before = await inspector.xlen(queue)
        private_redis.stop()
        down_at = time.monotonic()
        await asyncio.sleep(3.0)  # the outage itself, not a barrier
        private_redis.start()
        await private_redis.wait_ready(10)
        downtime = time.monotonic() - down_at
        # The append-only file kept the stream.
        assert await inspector.xlen(queue) >= stream_before
        # The group's entries-read is unknown after a restart: recovery is
        # measured by items processed, which only a live worker child does.
        processed_before = (await counts(inspector, queue))[0]

        async def processes_again() -> bool:
            return (await counts(inspector, queue))[0] > processed_before

        recovery = await wait_for(
            "recovery", processes_again, 30, inspector, queue, worker
        )

        async def all_processed() -> bool:
            return (await counts(inspector, queue))[0] == ITEMS

        async def none_pending() -> bool:
            return int((await inspector.xpending(queue, "taskiq"))["pending"]) == 0

        await wait_for("every item", all_processed, 60, inspector, queue, worker)
        await wait_for("no pending", none_pending, 30, inspector, queue, worker)
        await sending
    finally:
        sending.cancel()
        await asyncio.wait({sending})
    distinct, total = await counts(inspector, queue)
    no_result = await missing_results(tasks)
    took = worker.stop(timeout=20)
    print(
        f"\nRedis restart ({downtime:.2f} s down, {stream_before} entries kept): "
        f"processing again {recovery:.2f} s after Redis is back; "
        f"{distinct}/{ITEMS} items, {total - distinct} duplicate processing(s), "
        f"{no_result} result(s) missing, {send_failures} failed send(s) retried "
        f"by the producer, worker child restarted {worker.crashes()} time(s), "
        f"SIGTERM exit in {took:.2f} s",
    )
    assert distinct == ITEMS
    assert worker.process.returncode == 0, worker.output()
