"""Fixtures of the fault suite: workers, private Redis servers, RabbitMQ queues.

Every process a test starts (``taskiq worker`` process groups,
``redis-server``) is killed when the test ends, whether it passed or not.

The suite is black-box (the package's public API, and what Redis, RabbitMQ
and NATS show), so it runs against any version of the package: copy
``tests/`` into a worktree of that version and run pytest from there. The
workers import ``taskiq_batching`` from the tree the tests are in (their
working directory and ``PYTHONPATH``), print where from (``TB_PACKAGE=``),
and each test checks it.
"""

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import AsyncBroker

from tests.integration.faults.brokers import make_broker
from tests.integration.faults.redis_server import REDIS_SERVER, RedisServer
from tests.integration.workers import ROOT, Worker, eventually

APP = "tests.integration.faults.app:broker"


@pytest.fixture
def queue_prefix() -> str:
    return "tb-fault"


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path, queue: str) -> Iterator[StartWorker]:
    """Start ``taskiq worker`` on the fault app; ``settings`` are its environment.

    The worker imports ``taskiq_batching`` from the tree these tests are in
    (its working directory and ``PYTHONPATH``), and prints where from.
    """
    workers: list[Worker] = []
    redis_urls: set[str] = set()

    def start(
        settings: dict[str, str], args: Sequence[str] = (), app: str = APP
    ) -> Worker:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        # The path is the test's (a ``TB_WAIT_IN_BROKER`` setting), not the
        # pytest process's: the fault tests' set-ups assume their path.
        env = {"TB_QUEUE": queue, "PYTHONPATH": path, "TB_WAIT_IN_BROKER": ""}
        env.update(settings)
        worker = Worker(
            env, tmp_path / f"worker-{len(workers)}.log", app=app, args=args
        )
        workers.append(worker)
        redis_urls.add(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.kill()
        for url in redis_urls:  # what the workers wrote, once they are gone
            _delete_keys(url, f"{queue}*")
            _delete_keys(url, "{" + f"{queue}:*")  # where batches wait (wait path)
    for worker in workers:
        package = worker.package()
        assert package is None or package.startswith(str(ROOT)), (
            f"the worker imported {package}, not the package under {ROOT}"
        )


def _delete_keys(url: str, pattern: str) -> None:
    """Delete a test's keys (records, results); a server already gone is fine."""
    with contextlib.suppress(RedisError, OSError):
        client = SyncRedis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            keys = list(client.scan_iter(pattern, count=10_000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


Producer = Callable[[dict[str, str]], Awaitable[AsyncBroker]]


@pytest.fixture
async def producer(queue: str) -> AsyncIterator[Producer]:
    """Start a producer broker like the worker's (``settings`` as the app's).

    Its startup creates the stream's consumer group, or the AMQP exchange
    and queue, so nothing sent before the worker is up is dropped.
    """
    brokers: list[AsyncBroker] = []

    async def start(settings: dict[str, str]) -> AsyncBroker:
        broker = make_broker({"TB_QUEUE": queue, **settings})
        await broker.startup()
        brokers.append(broker)
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            await broker.shutdown()


StartRedis = Callable[..., Awaitable[RedisServer]]


@pytest.fixture
async def start_redis(tmp_path: Path) -> AsyncIterator[StartRedis]:
    """Start a private ``redis-server`` (see ``RedisServer``), ready to use."""
    if not REDIS_SERVER.exists():
        reason = f"{REDIS_SERVER} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI needs it")
        pytest.skip(reason)
    servers: list[RedisServer] = []

    async def start(persistent: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persistent)
        servers.append(server)
        server.start()
        await server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


class Rabbit:
    """The test's RabbitMQ queues: observed with a passive declare, then deleted.

    RabbitMQ's management API is not assumed. Unacked messages are not
    counted by a passive declare, but they are ready again as soon as the
    worker's connection is gone.
    """

    def __init__(self, connection: AbstractRobustConnection, url: str) -> None:
        self.connection = connection
        self.url = url
        self.queues: list[str] = []

    def use(self, queue: str) -> str:
        """Delete this queue (and its exchange, dead-letter queue) at the end."""
        self.queues.append(queue)
        return queue

    async def state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        channel: AbstractChannel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        finally:
            if not channel.is_closed:
                await channel.close()

    async def cleanup(self) -> None:
        for queue in self.queues:
            channel = await self.connection.channel()
            for name in (queue, f"{queue}.dead_letter"):
                try:
                    await channel.queue_delete(name)
                except ChannelNotFoundEntity:
                    channel = await self.connection.channel()
            await channel.exchange_delete(queue)


@pytest.fixture
async def rabbit(rabbitmq_url: str) -> AsyncIterator[Rabbit]:
    connection = await aio_pika.connect_robust(rabbitmq_url)
    observer = Rabbit(connection, rabbitmq_url)
    try:
        yield observer
    finally:
        try:
            await observer.cleanup()
        finally:
            await connection.close()


Settings = Callable[..., dict[str, str]]


@pytest.fixture
def settings(request: pytest.FixtureRequest, redis_url: str, queue: str) -> Settings:
    """The worker's (and producer's) settings for the test's ``kind`` of broker.

    ``settings(name=queue, **more)``: on queue ``name``, with ``more``
    settings. A test using it is parametrized by ``kind`` (stream, list,
    amqp, nats); RabbitMQ is asked for only when the kind is amqp.
    """
    kind = request.getfixturevalue("kind")
    rabbit: Rabbit | None = None
    if kind == "amqp":
        rabbit = request.getfixturevalue("rabbit")
    nats_url = request.getfixturevalue("nats_url") if kind == "nats" else None

    def make(name: str = queue, **more: Any) -> dict[str, str]:
        base = {"TB_BROKER": kind, "REDIS_URL": redis_url, "TB_QUEUE": name}
        if rabbit is not None:
            base.update(RABBITMQ_URL=rabbit.url, TB_QUEUE=rabbit.use(name))
        if nats_url is not None:
            base.update(NATS_URL=nats_url)
        return {**base, **{key: str(value) for key, value in more.items()}}

    return make


#: The brokers a ``Backlog`` observes (the ``kind`` a test is parametrized by).
KINDS = ("stream", "list", "amqp")


class Backlog:
    """What a broker of the test's ``kind`` still holds of a queue.

    :param kind: stream, list or amqp.
    :param redis: a client of the shared Redis.
    :param rabbit: the RabbitMQ observer (amqp only).
    """

    def __init__(self, kind: str, redis: Redis, rabbit: "Rabbit | None") -> None:
        self.kind = kind
        self.redis = redis
        self.rabbit = rabbit

    async def undelivered(self, queue: str) -> int:
        """Messages no consumer has received yet (a list's are all of them)."""
        if self.kind == "list":
            return int(await self.redis.llen(queue))
        if self.kind == "stream":
            (group,) = await self.redis.xinfo_groups(queue)
            return int(group["lag"])
        assert self.rabbit is not None
        return (await self.rabbit.state(queue))[0]

    async def left(self, queue: str) -> int:
        """Messages not done: not delivered, or delivered and not acked.

        A stream: its lag plus its pending entries. AMQP: ready messages once
        the worker's consumer has left (its unacked ones are ready again).
        """
        if self.kind == "stream":
            (group,) = await self.redis.xinfo_groups(queue)
            return int(group["lag"]) + int(group["pending"])
        if self.kind == "amqp":
            rabbit = self.rabbit
            assert rabbit is not None

            async def no_consumer() -> bool:
                return (await rabbit.state(queue))[1] == 0

            await eventually(no_consumer, 10, "the worker's consumer left the queue")
        return await self.undelivered(queue)


@pytest.fixture
def backlog(request: pytest.FixtureRequest, redis: Redis) -> Backlog:
    """The ``Backlog`` of the test's ``kind`` (RabbitMQ asked for only for amqp)."""
    kind = request.getfixturevalue("kind")
    rabbit = request.getfixturevalue("rabbit") if kind == "amqp" else None
    return Backlog(kind, redis, rabbit)


def amqp_settings(
    rabbit: Rabbit, redis_url: str, queue: str, **more: Any
) -> dict[str, str]:
    """The worker settings of an AMQP test on ``queue``."""
    return {
        "TB_BROKER": "amqp",
        "RABBITMQ_URL": rabbit.url,
        "REDIS_URL": redis_url,
        "TB_QUEUE": rabbit.use(queue),
        **{key: str(value) for key, value in more.items()},
    }
