import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis

from tests.integration.workers import Worker
from tests.redis_keys import DEFAULT_REDIS_URL, forget_queue
from tests.upstream.run_taskiq_redis_tests import Servers, start_servers


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Private servers of every Redis variant: standalone, a one-node cluster,
    a master with a sentinel (taskiq-redis's test variables to reach them).

    Started once a session for every module that uses them (each test has
    queues of its own), and stopped at its end.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    started = Servers(Path(tmp_path_factory.mktemp("redis-variants")), executable)
    try:
        yield start_servers(started)
    finally:
        started.stop_all()


@pytest.fixture(autouse=True)
async def tasks_ended() -> AsyncIterator[None]:
    """End the tasks a test leaves in its event loop before the loop closes.

    pytest-asyncio cancels them as it closes the loop. A cancelled aio-pika
    connection reader then runs its channels' close callbacks in tasks of
    their own (``OneShotCallback``), left pending by the closed loop and
    reported later as an unraisable exception against whichever test runs
    then. Here they are cancelled, and what that starts runs, first.
    """
    yield
    current = asyncio.current_task()
    for _ in range(5):  # what a cancelled task starts, then what that starts
        left = [task for task in asyncio.all_tasks() if task is not current]
        if not left:
            return
        for task in left:
            task.cancel()
        # Gathered, so that an error a task ends with is retrieved here.
        ended = asyncio.gather(*left, return_exceptions=True)
        await asyncio.wait({ended}, timeout=5)


@pytest.fixture
def queue_prefix() -> str:
    """The start of every queue (and key) name; a test module may override it."""
    return "tb-it"


@pytest.fixture
def queue(queue_prefix: str) -> Iterator[str]:
    """A queue name of the test's own; its Redis keys are deleted after it."""
    name = f"{queue_prefix}-{uuid.uuid4().hex[:10]}"
    yield name
    forget_queue(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), name)


@pytest.fixture
def extra_queues(queue: str) -> list[str]:
    """More RabbitMQ queues a module's tests make, deleted with the test's."""
    return []


@pytest.fixture
async def channel(
    rabbitmq_url: str, queue: str, extra_queues: list[str]
) -> AsyncIterator[AbstractChannel]:
    """A channel to observe the test's RabbitMQ queues; deletes them afterwards."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        yield await connection.channel()
        # A passive declare of a missing queue closes the channel: a fresh one.
        cleanup = await connection.channel()
        for name in (queue, f"{queue}.dead_letter", *extra_queues):
            await cleanup.queue_delete(name)
        await cleanup.exchange_delete(queue)
    finally:
        await connection.close()


@pytest.fixture
async def redis(redis_url: str, queue: str) -> AsyncIterator[Redis]:
    """A client of the shared Redis (``queue`` deletes the test's keys)."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def start_worker(
    redis_url: str, queue: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(
        kind: str,
        serializer: str,
        batch_size: int,
        batch_timeout: float,
        xread_block_ms: int = 500,
        idle_timeout_ms: int = 600_000,
        batch_delay: float = 0.0,
    ) -> Worker:
        env = {
            "TB_XREAD_BLOCK_MS": str(xread_block_ms),
            "TB_IDLE_MS": str(idle_timeout_ms),
            "TB_BATCH_DELAY": str(batch_delay),
            "REDIS_URL": redis_url,
            "TB_BROKER": kind,
            "TB_QUEUE": queue,
            "TB_SERIALIZER": serializer,
            "TB_BATCH_SIZE": str(batch_size),
            "TB_BATCH_TIMEOUT": str(batch_timeout),
        }
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
