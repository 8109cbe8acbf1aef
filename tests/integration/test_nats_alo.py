"""At-least-once of the NATS JetStream transport between real worker processes.

Workers are ``taskiq worker`` processes running
tests/integration/nats_alo_app.py on the real NATS server (``NATS_URL``),
or on a private ``nats-server`` the test starts and restarts; results and
a record of every batch go to the real Redis.
"""

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from tests.integration.nats_alo_app import make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

APP = "tests.integration.nats_alo_app:broker"
NATS_SERVER = "nats-server"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-nalo"


@pytest.fixture
async def stream(nats_url: str, queue: str) -> AsyncIterator[str]:
    """The test's stream (named as its queue), deleted afterwards."""
    yield queue
    with contextlib.suppress(OSError, nats.errors.NoServersError):
        client = await nats.connect(nats_url, max_reconnect_attempts=0)
        try:
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(queue)
        finally:
            await client.close()


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(
    nats_url: str, redis_url: str, stream: str, tmp_path: Path
) -> Iterator[StartWorker]:
    workers: list[Worker] = []

    def start(
        args: Sequence[str] = (), url: str = nats_url, **settings: object
    ) -> Worker:
        env = {
            "NATS_URL": url,
            "REDIS_URL": redis_url,
            "TB_QUEUE": stream,
            **{f"TB_{name.upper()}": str(value) for name, value in settings.items()},
        }
        worker = Worker(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            app=APP,
            args=("--ack-type", "when_saved", *args),
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill9()


async def consumer(nats_url: str, stream: str) -> ConsumerInfo:
    client = await nats.connect(nats_url)
    try:
        info: ConsumerInfo = await client.jetstream().consumer_info(stream, stream)
        return info
    finally:
        await client.close()


async def runs(redis: Redis, stream: str, what: str = "batches") -> Counter[int]:
    """How many times each item ran (``batches``) or started (``started``)."""
    raw = await redis.lrange(f"{stream}:{what}", 0, -1)
    return Counter(item for batch in raw for item in json.loads(batch)["items"])


async def test_size_only_batching_with_two_processes_does_not_wedge(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    start_worker: StartWorker,
) -> None:
    """Two processes share max_ack_pending=100; batches of 60 never fill alone.

    Each process holding, say, 50 messages in a buffer of 150 holds less
    than the consumer's limit, yet the consumer as a whole is at it: the
    server delivers nothing more until something is acked.
    """
    producer = make_broker(nats_url, redis_url, stream, 30, max_ack_pending=100)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        worker = start_worker(("--workers", "2"), batch_size=150, max_ack_pending=200)

        async def both_wait() -> bool:
            return (await consumer(nats_url, stream)).num_waiting == 2

        # Both processes ask at once: the server shares out what comes.
        await eventually(both_wait, 20, "both processes send pull requests")
        count = 1500
        await asyncio.gather(*(collect.kiq(item) for item in range(count)))

        async def all_delivered() -> bool:
            return (await consumer(nats_url, stream)).num_pending == 0

        # Wedged, the server keeps the rest: at its limit, it delivers no more.
        await eventually(all_delivered, 30, "every message delivered")
        # What waits in a buffer of 150 now is a size-only batch's tail.
        info = await consumer(nats_url, stream)
        assert (info.num_ack_pending or 0) < 2 * 150
        worker.stop(timeout=15)
        assert worker.process.returncode == 0, worker.output()
        assert await runs(redis, stream) == Counter(range(count))
    finally:
        await producer.shutdown()


async def redelivered(nats_url: str, stream: str, count: int, within: float) -> int:
    """How many of ``count`` messages a pull of this test gets within ``within`` s.

    Each fetch returns as its messages arrive; they are acked.
    """
    client = await nats.connect(nats_url)
    try:
        pulled = await client.jetstream().pull_subscribe(
            f"{stream}.tasks", durable=stream
        )
        got = 0
        deadline = asyncio.get_running_loop().time() + within
        while got < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(nats.errors.TimeoutError):
                for message in await pulled.fetch(count - got, timeout=left):
                    assert message.metadata.num_delivered == 2
                    await message.ack()
                    got += 1
        return got
    finally:
        await client.close()


async def test_messages_cut_off_at_the_stop_deadline_are_handed_back_at_once(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    start_worker: StartWorker,
) -> None:
    """A batch that outlives ``--wait-tasks-timeout``: its messages are nak'ed.

    ``ack_wait`` is 300 s: a message left ack-pending comes back after
    300 s; a nak'ed one at once. As soon as the worker has exited, a pull of
    the test's own gets all 20 (delivered a second time) within 10 s.
    """
    producer = make_broker(nats_url, redis_url, stream, 300)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        stuck = start_worker(
            ("--wait-tasks-timeout", "1"),
            batch_size=10,
            batch_timeout=0.1,
            batch_delay=3600,
            ack_wait=300,
        )
        for item in range(20):
            await collect.kiq(item)

        async def one_runs_and_all_held() -> bool:
            info = await consumer(nats_url, stream)
            started = await redis.llen(f"{stream}:started")
            return started == 1 and (info.num_ack_pending, info.num_pending) == (20, 0)

        await eventually(one_runs_and_all_held, 20, "a batch runs, 10 more wait")
        stuck.stop(timeout=15)
        assert "cut off" in stuck.output()
        assert await redelivered(nats_url, stream, 20, within=10) == 20
        assert await runs(redis, stream) == Counter()  # none finished
    finally:
        await producer.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServer:
    """A private JetStream server (on a port of its own) the test may kill."""

    def __init__(self, store: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = store
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the server (its JetStream store kept between starts)."""
        command = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "-sd", str(self.store)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Start the server; wait until it accepts connections."""
        self.launch()

        async def accepts() -> bool:
            try:
                client = await nats.connect(self.url, max_reconnect_attempts=0)
            except Exception:
                return False
            await client.close()
            return True

        await eventually(accepts, 10, "the private nats-server accepts")

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    if shutil.which(NATS_SERVER) is None:
        pytest.skip("no nats-server binary")
    server = NatsServer(tmp_path / "jetstream", tmp_path / "nats-server.log")
    yield server
    server.kill9()


async def test_acks_lost_in_a_server_restart_are_logged_and_nothing_runs_twice(
    redis_url: str,
    redis: Redis,
    stream: str,
    private_nats: NatsServer,
    start_worker: StartWorker,
) -> None:
    """The server is killed while batches run, and started again.

    Acks sent meanwhile may be lost (so may the last acks it had, not yet
    stored): the server delivers those messages again. The worker says so,
    and acks them again instead of running them twice.
    """
    await private_nats.start()
    producer = make_broker(private_nats.url, redis_url, stream, 5)
    await producer.startup()
    collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    count = 250
    for item in range(count):
        await collect.kiq(item)
    await producer.shutdown()
    worker = start_worker(
        url=private_nats.url,
        batch_size=10,
        batch_timeout=0.1,
        batch_delay=0.2,
        ack_wait=5,
    )

    async def batches_run() -> bool:
        return await redis.llen(f"{stream}:batches") >= 3

    await eventually(batches_run, 20, "batches run")
    private_nats.kill9()

    async def an_ack_is_unconfirmed() -> bool:
        return "may not have reached the server" in worker.output()

    await eventually(an_ack_is_unconfirmed, 20, "the worker warns of lost acks")
    await private_nats.start()

    async def all_acked() -> bool:
        if set(await runs(redis, stream)) != set(range(count)):
            return False
        info = await consumer(private_nats.url, stream)
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await eventually(all_acked, 40, "every message ran and was acked")
    worker.stop(timeout=15)
    assert await runs(redis, stream) == Counter(range(count)), worker.output()
