"""Real ``taskiq worker`` processes with taskiq-aio-pika against the real RabbitMQ.

The worker runs tests/integration/rabbit_app.py: results and a record of every
batch (and of every ack) go to the real Redis. Each test uses its own
exchange, queue and dead-letter queue, deleted afterwards.

RabbitMQ's management API is not assumed: the queue is observed with a
passive ``queue.declare`` (ready messages and consumers). Unacked messages
are not counted by it, but they become ready again as soon as the worker's
connection is gone, so "no ready message once the worker has left" means
"nothing was left unacked".
"""

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis
from taskiq import AsyncTaskiqTask
from taskiq.kicker import AsyncKicker

from tests.integration.rabbit_app import make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-rmq"


@pytest.fixture
def start_worker(
    rabbitmq_url: str,
    redis_url: str,
    queue: str,
    channel: AbstractChannel,  # set up first, so torn down after the workers
    tmp_path: Path,
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(
        qos: int,
        batch_size: int,
        batch_timeout: float | None,
        ack_type: str = "when_saved",
    ) -> Worker:
        env = {
            "RABBITMQ_URL": rabbitmq_url,
            "REDIS_URL": redis_url,
            "TB_QUEUE": queue,
            "TB_QOS": str(qos),
            "TB_BATCH_SIZE": str(batch_size),
            "TB_BATCH_TIMEOUT": "" if batch_timeout is None else str(batch_timeout),
        }
        worker = Worker(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            app="tests.integration.rabbit_app:broker",
            args=("--ack-type", ack_type),
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill9()  # the whole process group, even once the manager exited


@pytest.fixture
async def send(
    rabbitmq_url: str, redis_url: str, queue: str, channel: AbstractChannel
) -> AsyncIterator[Callable[[int], Awaitable[list[AsyncTaskiqTask[Any]]]]]:
    """Send items 0..n-1 to ``collect``, one per message, in order.

    The producer's startup declares the exchange and the queue, so nothing
    sent before the worker is up is dropped.
    """
    producer = make_broker(rabbitmq_url, redis_url, queue, qos=10)
    await producer.startup()
    collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})

    async def send_items(count: int) -> list[AsyncTaskiqTask[Any]]:
        return [await collect.kiq(item) for item in range(count)]

    yield send_items
    await producer.shutdown()


async def queue_state(channel: AbstractChannel, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of the queue, by a passive declare."""
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return result.message_count or 0, result.consumer_count or 0


async def batches(redis: Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await redis.lrange(f"{queue}:batches", 0, -1)]


async def acks(redis: Redis, queue: str) -> dict[str, int]:
    """task_id -> how many times its message was acked."""
    raw = await redis.hgetall(f"{queue}:acks")
    return {_text(key): int(value) for key, value in raw.items()}


async def results(sent: list[AsyncTaskiqTask[Any]], timeout: float) -> list[list[int]]:
    """Every message's result (the batch's items), within one deadline."""
    deadline = time.monotonic() + timeout
    values = []
    for task in sent:
        left = max(deadline - time.monotonic(), 0.1)
        result = await task.wait_result(timeout=left, check_interval=0.05)
        assert not result.is_err, result.error
        values.append(result.return_value)
    return values


async def assert_nothing_left(channel: AbstractChannel, queue: str) -> None:
    """Once the worker's consumer is gone, the queue holds no message."""

    async def no_consumer() -> bool:
        return (await queue_state(channel, queue))[1] == 0

    await eventually(no_consumer, 10, "the worker's consumer left the queue")
    assert await queue_state(channel, queue) == (0, 0)


async def test_qos_twice_batch_size_gives_full_batches(
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Callable[..., Worker],
    send: Callable[[int], Awaitable[list[AsyncTaskiqTask[Any]]]],
) -> None:
    sent = await send(1000)
    worker = start_worker(qos=200, batch_size=100, batch_timeout=30)
    values = await results(sent, timeout=30)
    for item, value in enumerate(values):
        assert item in value
        assert len(value) == 100
    recorded = await batches(redis, queue)
    assert [b["size"] for b in recorded] == [100] * 10, worker.output()
    assert {b["reason"] for b in recorded} == {"size"}
    assert sorted(i for b in recorded for i in b["items"]) == list(range(1000))
    # Per-message acks: every message acked once, none ready while running,
    # none unacked (they would be ready again) once the worker has left.
    await eventually(
        lambda: _equals(acks(redis, queue), {t.task_id: 1 for t in sent}),
        10,
        "every message acked once",
    )
    assert (await queue_state(channel, queue))[0] == 0
    worker.stop(timeout=15)
    assert worker.process.returncode == 0, worker.output()
    assert "batch_size" not in worker.output()  # no prefetch warning
    await assert_nothing_left(channel, queue)


@pytest.mark.parametrize(
    "batch_timeout",
    [
        pytest.param(0.3, id="with-timeout"),
        pytest.param(None, id="size-only"),
    ],
)
async def test_qos_below_batch_size_warns_caps_batches_and_finishes(
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Callable[..., Worker],
    send: Callable[[int], Awaitable[list[AsyncTaskiqTask[Any]]]],
    batch_timeout: float | None,
) -> None:
    worker = start_worker(qos=10, batch_size=100, batch_timeout=batch_timeout)

    async def warned() -> bool:
        return "prefetch" in worker.output()

    await eventually(warned, 15, "the prefetch warning in the worker's log")
    output = worker.output()
    assert "at most 10 unacked messages (its prefetch), shared by every task" in output
    assert "collect (batch_size=100)" in output
    assert "prefetch of at least 200" in output

    sent = await send(100)
    values = await results(sent, timeout=8)
    for item, value in enumerate(values):
        assert item in value
        assert len(value) <= 10
    recorded = await batches(redis, queue)
    assert all(b["size"] <= 10 for b in recorded), recorded
    assert sorted(i for b in recorded for i in b["items"]) == list(range(100))
    # The prefetch binds: each batch of 10 flushes as soon as it is all the
    # broker will send, without waiting for the timeout.
    assert {b["reason"] for b in recorded} == {"pressure"}
    await eventually(
        lambda: _equals(acks(redis, queue), {t.task_id: 1 for t in sent}),
        10,
        "every message acked once",
    )
    worker.stop(timeout=15)
    assert worker.process.returncode == 0, worker.output()
    await assert_nothing_left(channel, queue)


async def test_sigkill_with_half_full_buffer_loses_nothing(
    redis: Redis,
    queue: str,
    channel: AbstractChannel,
    start_worker: Callable[..., Worker],
    send: Callable[[int], Awaitable[list[AsyncTaskiqTask[Any]]]],
) -> None:
    first = start_worker(qos=200, batch_size=100, batch_timeout=3600)
    sent = await send(150)
    await results(sent[:100], timeout=20)

    async def rest_held_unacked() -> bool:
        # The first 100 are acked; nothing is ready, so the worker holds
        # the last 50, delivered and unacked, in its buffer.
        return len(await acks(redis, queue)) == 100 and await queue_state(
            channel, queue
        ) == (0, 1)

    await eventually(rest_held_unacked, 10, "50 messages held by the worker")
    assert not await sent[120].is_ready()
    assert [b["size"] for b in await batches(redis, queue)] == [100]

    first.kill9()

    async def redelivered() -> bool:
        return await queue_state(channel, queue) == (50, 0)

    # Exactly the unacked ones: the 50 buffered messages.
    await eventually(redelivered, 10, "the 50 unacked messages back in the queue")

    replacement = start_worker(qos=200, batch_size=100, batch_timeout=0.5)
    values = await results(sent, timeout=20)
    for item, value in enumerate(values):
        assert item in value
    assert sorted(values[120]) == list(range(100, 150))
    recorded = await batches(redis, queue)
    processed = Counter(i for b in recorded for i in b["items"])
    assert set(processed) == set(range(150)), replacement.output()
    twice = sorted(i for i, n in processed.items() if n > 1)
    assert twice == [], f"processed twice: {twice}"
    await eventually(
        lambda: _equals(acks(redis, queue), {t.task_id: 1 for t in sent}),
        10,
        "every message acked once",
    )
    replacement.stop(timeout=15)
    assert replacement.process.returncode == 0, replacement.output()
    await assert_nothing_left(channel, queue)


async def _equals(value: Awaitable[Any], expected: object) -> bool:
    return bool(await value == expected)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
