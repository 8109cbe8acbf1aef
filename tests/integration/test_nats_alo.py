"""At-least-once of the NATS JetStream transport between real worker processes.

Workers are ``taskiq worker`` processes running
tests/integration/nats_alo_app.py on the real NATS server (``NATS_URL``),
or on a private ``nats-server`` the test starts and restarts; results and
a record of every batch go to the real Redis.
"""

import asyncio
import contextlib
import json
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
