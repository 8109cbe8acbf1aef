"""A RabbitMQ connection closed under a worker that holds batches.

The worker is a real ``taskiq worker`` running
tests/integration/amqp_alo_app.py; its connections are closed by the
server (``rabbitmqctl close_connection``), only those, named by the app.
"""

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from tests.integration.amqp_alo_app import make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-lost"


@pytest.fixture
def worker(
    rabbitmq_url: str,
    redis_url: str,
    queue: str,
    channel: AbstractChannel,  # set up first, so torn down after the worker
    tmp_path: Path,
) -> Iterator[Worker]:
    env = {
        "RABBITMQ_URL": rabbitmq_url,
        "REDIS_URL": redis_url,
        "TB_QUEUE": queue,
        "TB_QOS": "100",
        "TB_BATCH_SIZE": "10",
    }
    started = Worker(
        env,
        tmp_path / "worker.log",
        app="tests.integration.amqp_alo_app:broker",
        args=("--ack-type", "when_saved"),
    )
    yield started
    started.kill9()


LIST_CONNECTIONS = ("rabbitmqctl", "-q", "list_connections")


async def connections(name: str) -> list[str]:
    """The server's ids of the connections with this name."""
    listed = await asyncio.to_thread(
        subprocess.run,
        [*LIST_CONNECTIONS, "pid", "client_properties", "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    wanted = f'{{"connection_name","{name}"}}'
    return [
        line.split("\t", 1)[0] for line in listed.stdout.splitlines() if wanted in line
    ]


async def close_connections(ids: list[str]) -> None:
    for connection in ids:
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "close_connection", connection, "test"],
            check=True,
            timeout=30,
        )


async def ready_and_consumers(channel: AbstractChannel, queue: str) -> tuple[int, int]:
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return result.message_count or 0, result.consumer_count or 0


async def runs(redis: Redis, queue: str, what: str) -> list[list[int]]:
    return [
        json.loads(raw)["items"] for raw in await redis.lrange(f"{queue}:{what}", 0, -1)
    ]


async def test_batches_of_a_lost_channel_that_had_not_started_do_not_run(
    rabbitmq_url: str,
    redis_url: str,
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    worker: Worker,
) -> None:
    """Batch 1 runs when the connection closes; batch 2 waits; 30 more wait.

    The server requeues all 50 and delivers them again on the new channel.
    Batch 1's acks fail (logged); nothing that had not started runs twice.
    """
    producer = make_broker(rabbitmq_url, redis_url, queue, 10, f"{queue}-producer")
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        count = 50
        for item in range(count):
            await collect.kiq(item)

        async def first_runs_and_all_delivered() -> bool:
            started = await runs(redis, queue, "started")
            return len(started) == 1 and (
                await ready_and_consumers(channel, queue)
            ) == (0, 1)

        await eventually(first_runs_and_all_delivered, 20, "batch 1 holds the rest")
        closed = await connections(f"{queue}-worker")
        assert closed
        await close_connections(closed)

        async def reconnected_and_redelivered() -> bool:
            # The queue's state first: a passive declare is cheap, a
            # rabbitmqctl process (an Erlang VM) is not: asked only then.
            if (await ready_and_consumers(channel, queue)) != (0, 1):
                return False
            now = await connections(f"{queue}-worker")
            return bool(now) and not set(now) & set(closed)

        await eventually(reconnected_and_redelivered, 30, "the worker is back")
        await redis.rpush(f"{queue}:go", *range(2 * count))

        async def all_ran() -> bool:
            ran = Counter(
                i for items in await runs(redis, queue, "batches") for i in items
            )
            return set(ran) == set(range(count))

        await eventually(all_ran, 30, "every item ran")
        worker.stop(timeout=20)
        assert worker.process.returncode == 0, worker.output()
    finally:
        await producer.shutdown()
    first = set((await runs(redis, queue, "started"))[0])
    ran = Counter(i for items in await runs(redis, queue, "batches") for i in items)
    assert {i for i, times in ran.items() if times > 1} <= first, ran
    assert set(ran) == set(range(count))
    log = worker.output()
    assert "finished after their AMQP channel was lost" in log  # batch 1's acks
    assert "not run: their connection to the broker was lost" in log
