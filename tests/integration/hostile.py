"""A real worker of ``hostile_app`` on the Redis stream or RabbitMQ, and raw messages.

Shared by ``test_hostile_input.py`` and ``test_fuzz.py``: start a worker,
send crafted bytes (as any producer can), read what came back, and see
that the worker process never restarted.
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncTaskiqTask, BrokerMessage, TaskiqResult
from taskiq.labels import prepare_label

from tests.integration.hostile_app import make_broker
from tests.integration.workers import Worker, eventually
from tests.redis_keys import delete_matching

KINDS = ["stream", "rabbit"]


def body(
    task_id: str,
    task_name: str,
    args: Any,
    kwargs: Any = None,
    labels: dict[str, Any] | None = None,
) -> bytes:
    """A message as taskiq's JSON formatter writes it, whatever its values."""
    prepared = {name: prepare_label(value) for name, value in (labels or {}).items()}
    return json.dumps(
        {
            "task_id": task_id,
            "task_name": task_name,
            "labels": {name: text for name, (text, _) in prepared.items()},
            "labels_types": {name: kind for name, (_, kind) in prepared.items()},
            "args": args,
            "kwargs": {} if kwargs is None else kwargs,
        }
    ).encode()


def raw(task_id: str, task_name: str, data: bytes) -> BrokerMessage:
    """The broker message that carries ``data``."""
    return BrokerMessage(task_id=task_id, task_name=task_name, message=data, labels={})


@dataclass
class Target:
    """A running worker, the producer and the Redis that holds results."""

    kind: str
    queue: str
    worker: Worker
    producer: AsyncBroker
    redis: Redis

    async def result(self, task_id: str, timeout: float = 30) -> TaskiqResult[Any]:
        task: AsyncTaskiqTask[Any] = AsyncTaskiqTask(
            task_id, self.producer.result_backend
        )
        return await task.wait_result(check_interval=0.05, timeout=timeout)

    async def pids(self) -> list[int]:
        return [
            int(pid) for pid in await self.redis.lrange(f"{self.queue}:pids", 0, -1)
        ]

    async def assert_never_restarted(self) -> None:
        assert self.worker.process.poll() is None, self.worker.output()
        assert len(await self.pids()) == 1, self.worker.output()
        assert self.worker.crashes() == 0, self.worker.output()

    async def settled(self) -> bool:
        """Whether everything sent was read and acked (or dropped by taskiq)."""
        if self.kind == "stream":
            groups = await self.redis.xinfo_groups(self.queue)
            return all(g["pending"] == 0 and g["lag"] == 0 for g in groups)
        return True  # RabbitMQ: unacked messages are not visible without management


def worker_env(
    kind: str, redis_url: str, rabbitmq_url: str, queue: str
) -> dict[str, str]:
    return {
        "TB_BROKER": kind,
        "REDIS_URL": redis_url,
        "RABBITMQ_URL": rabbitmq_url,
        "TB_QUEUE": queue,
    }


@contextlib.asynccontextmanager
async def hostile_worker(
    kind: str, redis_url: str, rabbitmq_url: str, queue: str, log: Path
) -> AsyncIterator[Target]:
    """A real ``taskiq worker`` of ``hostile_app``, started, then cleaned up."""
    redis = Redis.from_url(redis_url)
    producer = make_broker(kind, redis_url, rabbitmq_url, queue)
    # The producer declares the stream's group, or the exchange and queue,
    # before anything is sent.
    await producer.startup()
    worker = Worker(
        worker_env(kind, redis_url, rabbitmq_url, queue),
        log,
        app="tests.integration.hostile_app:broker",
    )
    target = Target(kind, queue, worker, producer, redis)
    try:
        await eventually(
            lambda: _started(target), 30, f"the worker started: {worker.output()}"
        )
        yield target
    finally:
        worker.kill9()
        await producer.shutdown()
        await delete_matching(redis, f"{queue}*")
        await redis.aclose()
        if kind == "rabbit":
            await _delete_rabbit(rabbitmq_url, queue)


async def _started(target: Target) -> bool:
    return bool(await target.pids())


async def _delete_rabbit(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.queue_delete(f"{queue}.dead_letter")
        await channel.exchange_delete(queue)
    finally:
        await connection.close()
