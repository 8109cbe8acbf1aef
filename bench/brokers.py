"""RabbitMQ and NATS JetStream in the benchmark: brokers, pre-loading, probes.

The taskiq app (``bench.taskiq_app.build``) takes its broker from here when
``AppSettings.broker`` is ``amqp`` (taskiq-aio-pika's ``AioPikaBroker``,
as shipped: a quorum queue, persistent messages) or ``nats``
(taskiq-nats's ``PullBasedJetStreamBroker``, a file stream and a durable
pull consumer). Plain and batched workers get the same broker settings:

* ``AMQP_QOS`` (``TBB_AMQP_QOS``): the channel's prefetch;
* ``NATS_PULL_BATCH`` (``TBB_NATS_PULL_BATCH``): the messages one fetch of
  taskiq-nats's own listener asks for (the plain worker's; the batched
  worker's transport fetches up to 100 at a time by itself).

Services: ``RABBITMQ_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``)
and ``NATS_URL`` (default ``nats://127.0.0.1:4222``).

Observing a drain (the benchmark never asks the worker):

* NATS: the durable's ``consumer_info``: taken = N - ``num_pending``,
  done = taken - ``num_ack_pending`` (acked), exactly.
* RabbitMQ without the management plugin: a passive ``queue.declare``
  gives the ready messages only (unacked ones are not counted), so
  taken = N - ready, and done = the results stored: the messages have the
  task_ids ``t0 .. t{N-1}``, and a script walks the result keys from the
  first one not seen yet (cost proportional to progress). After the drain
  the worker is killed and the queue must hold no ready message: every
  delivery was acked (an unacked one would be ready again).
"""

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from redis.asyncio import Redis
from taskiq import AsyncBroker, BrokerMessage

from bench.measure import Progress, ProgressProbe

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NATS = "nats://127.0.0.1:4222"
#: The prefetch of both RabbitMQ workers (taskiq-aio-pika's default is 10,
#: which would starve the plain Receiver's 100 concurrent tasks).
AMQP_QOS = int(os.environ.get("TBB_AMQP_QOS", "1000"))
#: Messages per fetch of taskiq-nats's own (plain) listener; its default is 1.
NATS_PULL_BATCH = int(os.environ.get("TBB_NATS_PULL_BATCH", "100"))
#: The server processes whose CPU a drain reports, by service.
SERVERS = {"amqp": "beam.smp", "nats": "nats-server"}
#: Messages published between two waits for the broker (pre-loading).
PRELOAD_CHUNK = 1000
#: The RabbitMQ done-probe: from ARGV[2], the index of the first result key
#: (ARGV[1] .. index) that does not exist yet, at most ARGV[3].
FIRST_MISSING = """
local prefix, i, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
while i < n and redis.call('EXISTS', prefix .. i) == 1 do i = i + 1 end
return i
"""


def amqp_url() -> str:
    return os.environ.get("RABBITMQ_URL", DEFAULT_AMQP)


def nats_url() -> str:
    return os.environ.get("NATS_URL", DEFAULT_NATS)


def task_id(index: int) -> str:
    """The task_id of the pre-loaded message ``work(index)``."""
    return f"t{index}"


def make_broker(kind: str, queue: str) -> AsyncBroker:
    """The broker of a RabbitMQ or NATS workload (names from ``queue``)."""
    if kind == "amqp":
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

        return AioPikaBroker(
            amqp_url(),
            qos=AMQP_QOS,
            exchange=Exchange(name=queue),
            task_queues=[Queue(name=queue)],
            dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
        )
    if kind == "nats":
        from taskiq_nats import PullBasedJetStreamBroker

        return PullBasedJetStreamBroker(
            nats_url(),
            subject=f"{queue}.tasks",
            stream_name=queue,
            durable=queue,
            pull_consume_batch=NATS_PULL_BATCH,
        )
    raise ValueError(f"unknown broker {kind!r}")


def unreachable(kind: str) -> str | None:
    """Why a broker's server cannot be used here, or None."""
    import socket

    url = amqp_url() if kind == "amqp" else nats_url()
    parsed = urlparse(url)
    port = parsed.port or (5672 if kind == "amqp" else 4222)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), 2).close()
    except OSError as exc:
        return f"{url} unreachable ({exc})"
    return None


def server_cpu_seconds(kind: str) -> float:
    """CPU time used so far by the broker's server process(es) on this host."""
    from bench.procs import _cpu_seconds

    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="ascii") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if name == SERVERS[kind]:
            total += _cpu_seconds(int(entry))
    return total


# --- RabbitMQ ------------------------------------------------------------------


async def amqp_preload(broker: Any, messages: Sequence[BrokerMessage]) -> None:
    """Publish ``messages`` as ``AioPikaBroker.kick`` would, many at a time.

    The producer broker's ``startup`` declares the exchange and queues;
    the messages go out on its channel (publisher confirms: without them,
    some of the last ones were lost when the connection closed), with the
    headers and delivery mode ``kick`` gives them, ``PRELOAD_CHUNK`` at a
    time (aiormq writes each message with a system call of its own:
    ~4,000 messages/s here).
    """
    import aiormq

    await broker.startup()
    try:
        channel = await broker.write_channel.get_underlay_channel()
        exchange, queue = broker._exchange.name, broker._task_queues[0].name
        for start in range(0, len(messages), PRELOAD_CHUNK):
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        message.message,
                        exchange=exchange,
                        routing_key=queue,
                        properties=aiormq.spec.Basic.Properties(
                            headers={
                                "task_id": message.task_id,
                                "task_name": message.task_name,
                                **message.labels,
                            },
                            delivery_mode=2,
                        ),
                    )
                    for message in messages[start : start + PRELOAD_CHUNK]
                )
            )
    finally:
        await broker.shutdown()


class AmqpQueue:
    """A connection that watches (and finally deletes) a workload's queue.

    ``extra``: more queues to delete with it (a batched task's own queue).
    """

    def __init__(self, queue: str, extra: Sequence[str] = ()) -> None:
        self.queue = queue
        self.extra = list(extra)
        self.connection: Any = None
        self.channel: Any = None

    async def open(self) -> None:
        import aiormq

        self.connection = await aiormq.connect(amqp_url())
        self.channel = await self.connection.channel()

    async def ready(self) -> int:
        """Messages ready in the queue (delivered, unacked ones not counted)."""
        declared = await self.channel.queue_declare(self.queue, passive=True)
        return int(declared.message_count or 0)

    def probe(self, redis: Redis, prefix: str, total: int) -> ProgressProbe:
        first_missing = redis.register_script(FIRST_MISSING)
        seen = 0

        async def probe() -> Progress:
            nonlocal seen
            ready = await self.ready()
            seen = int(await first_missing(args=[f"{prefix}:t", seen, total]))
            return Progress(taken=total - ready, done=seen)

        return probe

    async def close(self) -> None:
        """Delete the queue, its dead-letter queue and exchange; disconnect."""
        if self.connection is None:
            return
        try:
            channel = await self.connection.channel()
            await channel.queue_delete(self.queue)
            await channel.queue_delete(f"{self.queue}.dead_letter")
            for name in self.extra:
                await channel.queue_delete(name)
            await channel.exchange_delete(self.queue)
        finally:
            await self.connection.close()


# --- NATS ----------------------------------------------------------------------


async def nats_preload(broker: Any, messages: Sequence[BrokerMessage]) -> None:
    """Publish ``messages`` on the broker's stream, acked by JetStream per chunk.

    The producer broker's ``startup`` creates the stream and the durable
    consumer (the worker reuses both); each chunk is published at once
    (``js.publish`` as ``kick`` does, concurrently) and waited for.
    """
    await broker.startup()
    try:
        for start in range(0, len(messages), PRELOAD_CHUNK):
            await asyncio.gather(
                *(
                    broker.js.publish(
                        broker.subject,
                        payload=message.message,
                        headers=message.labels or None,
                    )
                    for message in messages[start : start + PRELOAD_CHUNK]
                )
            )
    finally:
        await broker.client.close()


class NatsConsumer:
    """A connection that watches (and finally deletes) a workload's stream."""

    def __init__(self, queue: str) -> None:
        self.stream = queue
        self.client: Any = None

    async def open(self) -> None:
        import nats

        self.client = await nats.connect(nats_url())

    def probe(self, total: int) -> ProgressProbe:
        js = self.client.jetstream()

        async def probe() -> Progress:
            try:
                info = await js.consumer_info(self.stream, self.stream)
            except Exception:  # not created yet
                return Progress(0, 0)
            taken = total - int(info.num_pending or 0)
            return Progress(taken=taken, done=taken - int(info.num_ack_pending or 0))

        return probe

    async def close(self) -> None:
        """Delete the stream (and its consumer); disconnect."""
        if self.client is None:
            return
        try:
            await self.client.jetstream().delete_stream(self.stream)
        except Exception:  # never created
            pass
        finally:
            await self.client.close()


async def wait_ready(check: Any, total: int, what: str, timeout: float = 60) -> None:
    """Wait until ``await check()`` reports ``total`` messages stored."""
    deadline = time.monotonic() + timeout
    while (count := await check()) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {count} of {total} messages stored")
        await asyncio.sleep(0.05)
