"""Where a batched task's messages wait on the wait path, and what is left there.

With ``TB_WAIT_IN_BROKER`` (``BatchingMiddleware(wait_in_broker=True)``,
docs/fleet.md) a batched task's messages wait in the broker, not on the
main queue: Redis streams or lists per key, ``{<queue>:<task>}:q:<key>``;
a RabbitMQ queue per task (``<queue>.batch.<task>``); a NATS stream
``<stream>-batch`` with work-queue retention (an acked message is gone).
The fault tests count what is left there, and delete it afterwards.
"""

import asyncio
import contextlib
import importlib
import subprocess
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.integration.faults.conftest import Rabbit
from tests.integration.workers import eventually

#: The ``TB_WAIT_IN_BROKER`` value of each path (empty: per-worker buffering).
PATHS = {"today": "", "wait": "1"}


def key_pattern(queue: str, task: str) -> str:
    """The Redis keys of one task's waiting messages (a glob)."""
    return "{" + f"{queue}:{task}" + "}:q:*"


def amqp_queue(queue: str, task: str) -> str:
    """The RabbitMQ queue a task's messages wait in."""
    return f"{queue}.batch.{task}"


def nats_stream(queue: str) -> str:
    """The NATS stream batched tasks' messages wait in."""
    return f"{queue}-batch"


async def left_in_redis(kind: str, redis: Redis, queue: str, task: str) -> int:
    """Messages of ``task`` not done in Redis (a stream's: lag and pending).

    :param kind: ``stream`` or ``list``.
    :param redis: a client of the workers' Redis.
    :param queue: the broker's queue.
    :param task: the batched task.
    :return: their count.
    """
    left = 0
    groups: list[dict[str, Any]] = []
    # One SCAN call per 10,000 keys: the shared Redis holds many of others.
    async for key in redis.scan_iter(match=key_pattern(queue, task), count=10_000):
        if kind == "list":
            left += int(await redis.llen(key))
            continue
        groups = []
        with contextlib.suppress(ResponseError):  # emptied and deleted since
            groups = await redis.xinfo_groups(key)
        for group in groups:
            lag = group["lag"]
            left += int(group["pending"]) + (
                int(await redis.xlen(key)) if lag is None else int(lag)
            )
    return left


async def left_in_rabbit(rabbit: Rabbit, queue: str, task: str) -> int:
    """Messages ready in a task's queue once no worker consumes it.

    (A stopped worker's unacked ones are ready again when its connection
    closes.)
    """
    name = amqp_queue(queue, task)

    async def no_consumer() -> bool:
        return (await rabbit.state(name))[1] == 0

    await eventually(no_consumer, 10, "the workers' consumers left the task queue")
    return (await rabbit.state(name))[0]


async def task_queues(queue: str) -> list[str]:
    """The RabbitMQ queues batched tasks of ``queue`` wait in (``rabbitmqctl``).

    The app's every batched task gets one on the wait path, not only the
    task a test sends to.
    """
    listed = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "list_queues", "name", "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
    )
    prefix = amqp_queue(queue, "")
    return [name for name in listed.stdout.split() if name.startswith(prefix)]


async def left_in_nats(nats_url: str, queue: str) -> int:
    """Messages in the batch stream: not acked yet (work-queue retention)."""
    nats = importlib.import_module("nats")
    client = await nats.connect(nats_url)
    try:
        info = await client.jetstream().stream_info(nats_stream(queue))
        return int(info.state.messages)
    finally:
        await client.close()


async def delete_nats_streams(nats_url: str, queue: str) -> None:
    """Delete the test's NATS streams (main and batch), if they were made."""
    nats = importlib.import_module("nats")
    client = await nats.connect(nats_url)
    try:
        for name in (queue, nats_stream(queue)):
            with contextlib.suppress(Exception):  # never created
                await client.jetstream().delete_stream(name)
    finally:
        await client.close()


class Where:
    """Where ``collect``'s batches wait, on the test's broker (wait path).

    :param kind: the broker.
    :param redis: a client of the workers' Redis.
    :param queue: the test's queue.
    :param rabbit: the RabbitMQ observer (amqp).
    :param nats_url: the NATS server (nats).
    """

    def __init__(
        self, kind: str, redis: Redis, queue: str, rabbit: Rabbit | None, nats_url: str
    ) -> None:
        self.kind = kind
        self.redis = redis
        self.queue = queue
        self.rabbit = rabbit
        self.nats_url = nats_url

    async def left(self) -> int:
        """Messages not done there (RabbitMQ: once no worker consumes)."""
        if self.kind in ("stream", "list"):
            return await left_in_redis(self.kind, self.redis, self.queue, "collect")
        if self.rabbit is not None:
            return await left_in_rabbit(self.rabbit, self.queue, "collect")
        return await left_in_nats(self.nats_url, self.queue)

    async def consumers(self) -> int:
        """RabbitMQ: the main queue's consumers (one per worker)."""
        assert self.rabbit is not None
        return (await self.rabbit.state(self.queue))[1]
