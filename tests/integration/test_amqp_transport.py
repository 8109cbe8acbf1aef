"""The AMQP transport on the real RabbitMQ: chunked reads, bulk acks, stops.

Each test uses its own exchange, queue and dead-letter queue, deleted
afterwards. The last tests run real ``taskiq worker`` processes
(tests/integration/amqp_app.py: results and a record of every batch in
the real Redis). Queues are observed with a passive ``queue.declare`` (ready
messages): unacked deliveries are ready again once the consumer's channel
is closed, so "no ready message after shutdown" means "nothing left
unacked", and a double ack would have closed the channel (406).
"""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis
from taskiq import AckableMessage, BrokerMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq.kicker import AsyncKicker
from taskiq.utils import maybe_awaitable
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.transports import amqp, transport_for
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.amqp_queues import batch_queue_name
from taskiq_batching.transports.delivery import Delivery
from tests.helpers import running_worker
from tests.integration.amqp_app import make_broker as make_app_broker
from tests.integration.stream_batches import declare
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MakeBroker = Callable[..., AioPikaBroker]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp"


@pytest.fixture
async def observer(rabbitmq_url: str, queue: str) -> AsyncIterator[AbstractChannel]:
    """A channel to observe the test's queue; deletes its names afterwards."""
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    yield channel
    cleanup = await connection.channel()
    await cleanup.queue_delete(queue)
    await cleanup.queue_delete(batch_queue_name(queue, "collect"))  # wait path
    await cleanup.queue_delete(f"{queue}.dead_letter")
    await cleanup.exchange_delete(queue)
    await connection.close()


@pytest.fixture
async def make_broker(
    rabbitmq_url: str,
    queue: str,
    observer: AbstractChannel,  # set up first, torn down after the brokers
) -> AsyncIterator[MakeBroker]:
    brokers: list[AioPikaBroker] = []

    def make(qos: int = 10, batching: bool = False) -> AioPikaBroker:
        broker = AioPikaBroker(
            rabbitmq_url,
            qos=qos,
            exchange=Exchange(name=queue),
            task_queues=[Queue(name=queue)],
            dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
        )
        broker.is_worker_process = True
        if batching:
            broker = broker.with_result_backend(
                InmemoryResultBackend()
            ).with_middlewares(BatchingMiddleware())
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        if broker.read_conn is not None and not broker.read_conn.is_closed:
            await broker.shutdown()


async def ready(observer: AbstractChannel, queue: str) -> int:
    declared = await observer.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def kick(broker: AioPikaBroker, count: int) -> None:
    for index in range(count):
        await broker.kick(
            BrokerMessage(
                task_id=str(index),
                task_name="t",
                message=str(index).encode(),
                labels={},
            )
        )


async def read_at_least(
    transport: AmqpTransport, count: int, limit: int = 100
) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(50):
        if len(got) >= count:
            break
        got.extend(await transport.read(limit))
    assert len(got) >= count, f"read {len(got)} of {count}"
    return got


async def settled(observer: AbstractChannel, queue: str, count: int) -> None:
    for _ in range(100):
        if await ready(observer, queue) == count:
            return
        await asyncio.sleep(0.05)
    assert await ready(observer, queue) == count


async def received(transport: AmqpTransport, count: int) -> None:
    """Wait until ``count`` deliveries came and wait unread in the transport."""

    async def came() -> bool:
        return len(transport._inbox.unread) >= count

    await eventually(came, 10, f"{count} deliveries received, not read")


async def receiver_ack(transport: AmqpTransport, delivery: Delivery) -> None:
    """Ack as taskiq's Receiver does, with what ``for_receiver`` gives."""
    message = transport.for_receiver(delivery)
    assert isinstance(message, AckableMessage)
    assert message.ack is not None
    await maybe_awaitable(message.ack())


class FrameSpy:
    """Records the ack and nack frames a channel sends."""

    def __init__(self, channel: Any) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        ack, nack = channel.basic_ack, channel.basic_nack

        async def basic_ack(
            tag: int, multiple: bool = False, wait: bool = True
        ) -> None:
            self.frames.append(("ack", tag, multiple))
            await ack(tag, multiple=multiple, wait=wait)

        async def basic_nack(
            tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
        ) -> None:
            self.frames.append(("nack", tag, multiple))
            await nack(tag, multiple=multiple, requeue=requeue, wait=wait)

        channel.basic_ack = basic_ack
        channel.basic_nack = basic_nack


async def test_an_amqp_broker_gets_the_amqp_transport(make_broker: MakeBroker) -> None:
    assert type(transport_for(make_broker(qos=7))) is AmqpTransport


async def test_reads_come_in_chunks_up_to_the_prefetch(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str
) -> None:
    broker = make_broker(qos=10)
    await broker.startup()
    await kick(broker, 35)
    transport = AmqpTransport(broker)
    first = await read_at_least(transport, 4, limit=4)
    assert len(first) == 4  # never more than asked
    await received(transport, 10 - 4)  # the prefetch's 10 arrived
    rest = await transport.read(100)
    assert len(rest) == 6  # one read: all the server would deliver
    assert transport.outstanding == 10
    assert await transport.read(100) == []  # nothing more until acks
    deliveries = first + rest
    await transport.ack([d.handle for d in deliveries])
    assert transport.outstanding == 0
    while len(deliveries) < 35:
        chunk = await transport.read(100)
        assert len(chunk) <= 10
        assert transport.outstanding <= 10
        deliveries.extend(chunk)
        await transport.ack([d.handle for d in chunk])
    assert [d.data for d in deliveries] == [str(i).encode() for i in range(35)]
    await transport.close()
    await settled(observer, queue, 0)
    await broker.shutdown()
    assert await ready(observer, queue) == 0


async def test_mixed_acks_use_multiple_where_they_can_and_ack_each_once(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str
) -> None:
    broker = make_broker(qos=60)
    await broker.startup()
    await kick(broker, 60)
    transport = AmqpTransport(broker)
    deliveries = await read_at_least(transport, 60)
    channel = deliveries[0].handle[0]
    spy = FrameSpy(channel)
    handles = [d.handle for d in deliveries]
    tags = [h[1] for h in handles]
    await transport.ack(handles[10:20])  # behind unfinished ones: one each
    await transport.release(deliveries[20:25])
    await transport.ack(handles[0:5])  # the head: one multiple ack
    # Concurrent settles of interleaved ranges, each in one call.
    await asyncio.gather(
        transport.ack(handles[5:10]),
        transport.ack(handles[30:40]),
        transport.ack([handles[25], handles[27]]),
        transport.release([deliveries[26], deliveries[28]]),
        transport.ack(handles[40:55]),
    )
    await transport.ack([handles[29], *handles[55:60]])
    await receiver_ack(transport, deliveries[59])  # acked: nothing sent twice
    assert transport.outstanding == 0
    assert not channel.is_closed, "a frame acked an unknown tag (406)"
    assert ("ack", tags[4], True) in spy.frames
    acked = [f for f in spy.frames if f[0] == "ack"]
    assert len(acked) < 60 - 7
    assert len([f for f in spy.frames if f[1] == tags[59]]) == 1  # acked once
    # The 7 given back come again, and are acked through a receiver's ack.
    again = await read_at_least(transport, 7)
    assert sorted(d.data for d in again) == sorted(
        d.data for d in [*deliveries[20:25], deliveries[26], deliveries[28]]
    )
    for delivery in again:
        await receiver_ack(transport, delivery)
    assert not channel.is_closed
    await transport.close()
    assert not channel.is_closed
    await broker.shutdown()
    assert await ready(observer, queue) == 0  # nothing was left unacked


async def test_release_gives_messages_back_and_close_returns_unread_ones(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str
) -> None:
    broker = make_broker(qos=20)
    await broker.startup()
    await kick(broker, 30)
    transport = AmqpTransport(broker)
    first = await read_at_least(transport, 5, limit=5)
    await transport.release(first[:3])
    await transport.ack([d.handle for d in first[3:]])
    await received(transport, 20)  # the prefetch's 20 came again (none read)
    # 2 acked; the 28 others (3 released, up to 20 delivered but unread)
    # are ready once the transport closed, the connection still open.
    await transport.close()
    await settled(observer, queue, 28)
    await broker.shutdown()
    assert await ready(observer, queue) == 28


@pytest.mark.parametrize("qos", [10, 20])
async def test_two_size_only_tasks_share_the_prefetch_and_progress(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str, qos: int
) -> None:
    broker = make_broker(qos=qos, batching=True)
    seen: dict[str, list[int]] = {"a": [], "b": []}

    @batch_task(broker, task_name="a", batch_size=100, batch_timeout=None)
    async def task_a(items: list[int]) -> None:
        seen["a"].extend(items)

    @batch_task(broker, task_name="b", batch_size=100, batch_timeout=None)
    async def task_b(items: list[int]) -> None:
        seen["b"].extend(items)

    await broker.startup()
    async with running_worker(broker):
        for i in range(150):
            await task_a.kiq(i)
            await task_b.kiq(i)
        for _ in range(300):
            if len(seen["a"]) + len(seen["b"]) == 300:
                break
            await asyncio.sleep(0.05)
        assert (len(seen["a"]), len(seen["b"])) == (150, 150)
    assert sorted(seen["a"]) == sorted(seen["b"]) == list(range(150))
    assert await ready(observer, queue) == 0


async def test_stops_with_full_buffers_flush_and_ack_everything(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str
) -> None:
    seen: list[int] = []
    for round_ in range(3):
        broker = make_broker(qos=200, batching=True)
        seen.clear()

        @batch_task(broker, task_name="collect", batch_size=1000, batch_timeout=3600)
        async def collect(items: list[int]) -> None:
            seen.extend(items)

        @broker.task(task_name="plain")
        async def plain(value: int) -> int:
            return value

        await broker.startup()
        batcher = BatchingMiddleware.of(broker).batcher
        assert batcher is not None
        async with running_worker(broker):
            for i in range(150):
                await collect.kiq(i)
            plain_task = await plain.kiq(7)
            result = await plain_task.wait_result(timeout=10)
            assert result.return_value == 7
            for _ in range(200):
                if batcher.buffered() == 150:
                    break
                await asyncio.sleep(0.02)
            assert batcher.buffered() == 150, round_
            assert seen == []
        assert sorted(seen) == list(range(150)), round_
        assert await ready(observer, queue) == 0, round_


class Proxy:
    """A TCP proxy to RabbitMQ whose connections can all be cut at once."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


# aio-pika's own close callbacks of the cut connections may outlive the loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_lost_connection_is_consumed_again_and_nothing_is_lost(
    rabbitmq_url: str, observer: AbstractChannel, queue: str
) -> None:
    parsed = urlparse(rabbitmq_url)
    proxy = Proxy(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    port = await proxy.start()
    proxied = parsed._replace(
        netloc=f"{parsed.netloc.rpartition('@')[0]}@127.0.0.1:{port}"
    )
    names = {
        "exchange": Exchange(name=queue),
        "task_queues": [Queue(name=queue)],
        "dead_letter_queue": Queue(name=f"{queue}.dead_letter"),
    }
    producer = AioPikaBroker(rabbitmq_url, **names)  # type: ignore[arg-type]
    broker = AioPikaBroker(
        urlunparse(proxied),
        qos=50,
        reconnect_interval=0.3,
        **names,  # type: ignore[arg-type]
    )
    broker.is_worker_process = True
    broker.with_result_backend(InmemoryResultBackend()).with_middlewares(
        BatchingMiddleware()
    )
    seen: list[int] = []

    @batch_task(broker, task_name="collect", batch_size=10, batch_timeout=0.1)
    async def collect(items: list[int]) -> None:
        seen.extend(items)
        await asyncio.sleep(0.05)

    sender: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    await producer.startup()
    await broker.startup()
    try:
        async with running_worker(broker, stop_timeout=20):
            for i in range(300):
                await sender.kiq(i)
            for _ in range(200):
                if len(seen) >= 60:
                    break
                await asyncio.sleep(0.02)
            proxy.cut()  # the worker's read and write connections
            at_cut = len(seen)
            assert at_cut < 300
            for _ in range(400):
                if set(seen) == set(range(300)):
                    break
                await asyncio.sleep(0.05)
            assert set(seen) == set(range(300))
            await settled(observer, queue, 0)
        # At least once: only what was held when the connection went may
        # run twice (its acks could not reach the server).
        assert len(seen) - 300 <= 50, len(seen) - 300
    finally:
        await producer.shutdown()
        await proxy.stop()
    assert await ready(observer, queue) == 0


async def test_the_prefetch_binds_each_queues_consumer(
    rabbitmq_url: str, observer: AbstractChannel, queue: str
) -> None:
    """``qos`` with ``global=False``: RabbitMQ applies it per consumer."""
    other = f"{queue}-b"
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=5,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue), Queue(name=other)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    broker.is_worker_process = True
    await broker.startup()
    try:
        for index in range(20):
            await broker.kick(
                BrokerMessage(
                    task_id=str(index),
                    task_name="t",
                    message=str(index).encode(),
                    labels={"queue_name": (queue, other)[index % 2]},
                )
            )
        transport = AmqpTransport(broker)
        got = await read_at_least(transport, 10)
        await asyncio.sleep(0.3)
        got += await transport.read(100)
        assert len(got) == 10  # 5 for each queue's consumer
        assert transport.prefetch == 5
        assert transport.outstanding == 5  # the fullest consumer's
        await transport.ack([d.handle for d in got[:1]])
        assert transport.outstanding == 5
        await transport.close()
        await broker.shutdown()
        # The server requeues a closed channel's unacked deliveries on its
        # own time: the count is awaited, not sampled once.
        total = 0
        for _ in range(100):
            total = await ready(observer, queue) + await ready(observer, other)
            if total == 19:
                break
            await asyncio.sleep(0.05)
        assert total == 19
    finally:
        await observer.queue_delete(other)


async def test_a_no_ack_consumer_gives_deliveries_without_acks(
    rabbitmq_url: str, observer: AbstractChannel, queue: str
) -> None:
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=5,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue, consumer_arguments={"no_ack": True})],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    broker.is_worker_process = True
    await broker.startup()
    await kick(broker, 12)
    transport = AmqpTransport(broker)
    got = await read_at_least(transport, 12)
    assert not transport.acknowledges
    assert [d.handle for d in got] == [None] * 12
    assert transport.for_receiver(got[0]) == b"0"
    assert transport.outstanding == 0
    await transport.ack([d.handle for d in got])
    await transport.close()
    await broker.shutdown()
    assert await ready(observer, queue) == 0


async def test_interrupt_lets_an_idle_read_return_and_close_cancels_once(
    make_broker: MakeBroker,
    observer: AbstractChannel,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = make_broker(qos=10)
    await broker.startup()
    transport = AmqpTransport(broker)
    assert await transport.read(10) == []  # idle: returns for the timers
    monkeypatch.setattr(amqp, "IDLE_WAIT", 600.0)
    reading = asyncio.ensure_future(transport.read(10))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    assert await transport.interrupt(reading) == []
    # Not after the idle wait: at once (bounded loosely, for a loaded machine).
    assert asyncio.get_running_loop().time() - started < 60
    assert not reading.cancelled()
    await asyncio.gather(transport.close(), transport.close())
    declared = await observer.declare_queue(queue, passive=True)
    assert declared.declaration_result.consumer_count == 0
    assert broker.read_channel is not None
    assert not broker.read_channel.is_closed
    await broker.shutdown()


async def test_deliveries_are_tapped_whole_even_over_many_frames(
    make_broker: MakeBroker, observer: AbstractChannel, queue: str
) -> None:
    broker = make_broker(qos=10)
    await broker.startup()
    transport = AmqpTransport(broker)
    through_aio_pika: list[Any] = []

    async def on_message(message: Any) -> None:  # pragma: no cover - must not run
        through_aio_pika.append(message)

    transport._inbox.on_message = on_message  # type: ignore[method-assign]
    # RabbitMQ's frame_max is 128 KiB: this body comes in three body frames.
    big = bytes(range(256)) * 1200
    await broker.kick(BrokerMessage(task_id="b", task_name="t", message=big, labels={}))
    await kick(broker, 3)
    got = await read_at_least(transport, 4)
    assert [d.data for d in got] == [big, b"0", b"1", b"2"]
    assert through_aio_pika == []  # the consumer was tapped before it started
    await transport.ack([d.handle for d in got])
    await transport.close()
    await broker.shutdown()
    assert await ready(observer, queue) == 0


# --- real ``taskiq worker`` processes (tests/integration/amqp_app.py) -------


@pytest.fixture
def start_worker(
    rabbitmq_url: str,
    redis_url: str,
    queue: str,
    observer: AbstractChannel,  # set up first, so torn down after the workers
    tmp_path: Path,
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(batch_size: int, batch_timeout: float, wait: bool = False) -> Worker:
        env = {
            "RABBITMQ_URL": rabbitmq_url,
            "REDIS_URL": redis_url,
            "TB_QUEUE": queue,
            "TB_QOS": "200",
            "TB_BATCH_SIZE": str(batch_size),
            "TB_BATCH_TIMEOUT": str(batch_timeout),
            # The path under test, whatever the suite's environment says.
            "TB_WAIT_IN_BROKER": "1" if wait else "",
        }
        worker = Worker(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            app="tests.integration.amqp_app:broker",
            args=("--ack-type", "when_saved"),
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill9()


async def consumers_and_ready(observer: AbstractChannel, queue: str) -> tuple[int, int]:
    declared = await observer.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return result.consumer_count or 0, result.message_count or 0


async def recorded(redis: Redis, queue: str) -> Counter[int]:
    """How many times each item ran in a batch."""
    raw = await redis.lrange(f"{queue}:batches", 0, -1)
    return Counter(item for batch in raw for item in json.loads(batch)["items"])


@pytest.mark.parametrize("wait", [False, True], ids=["today", "wait"])
async def test_sigkill_with_a_half_full_buffer_loses_nothing(
    rabbitmq_url: str,
    redis_url: str,
    redis: Redis,
    queue: str,
    observer: AbstractChannel,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    """kill -9 of the worker holding 50 messages: all run once elsewhere.

    ``today``: they wait in the main queue's consumer, the worker's buffer.
    ``wait``: the plugin's producer sends them to the task's own queue
    (single active consumer, docs/fleet.md), whose consumer holds them.
    """
    with monkeypatch.context() as env:
        env.setenv("TB_WAIT_IN_BROKER", "1" if wait else "")
        producer = make_app_broker(rabbitmq_url, redis_url, queue, qos=10)
    collect = declare(producer, 1000, 3600)
    # Where the messages wait, for the observer.
    held_in = batch_queue_name(queue, "collect") if wait else queue
    await producer.startup()
    try:
        first = start_worker(batch_size=1000, batch_timeout=3600, wait=wait)
        sent = [await collect.kiq(item) for item in range(50)]

        async def all_held() -> bool:
            return await consumers_and_ready(observer, held_in) == (1, 0)

        await eventually(all_held, 20, "the worker holds the 50 messages")
        assert await recorded(redis, queue) == Counter()
        first.kill9()  # a crash with 50 messages in its buffer

        async def requeued() -> bool:
            return await consumers_and_ready(observer, held_in) == (0, 50)

        await eventually(requeued, 10, "the 50 unacked messages back in the queue")
        replacement = start_worker(batch_size=10, batch_timeout=0.2, wait=wait)
        for task in sent:
            result = await task.wait_result(timeout=20, check_interval=0.05)
            assert not result.is_err, result.error
        assert await recorded(redis, queue) == Counter(range(50))
        replacement.stop(timeout=15)
        assert replacement.process.returncode == 0, replacement.output()
        assert await consumers_and_ready(observer, held_in) == (0, 0)  # all acked
    finally:
        await producer.shutdown()


@pytest.mark.parametrize("wait", [False, True], ids=["today", "wait"])
async def test_sigterm_flushes_the_buffer_and_exits(
    rabbitmq_url: str,
    redis_url: str,
    redis: Redis,
    queue: str,
    observer: AbstractChannel,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    """SIGTERM with 30 messages buffered: they run, all acked, exit 0.

    ``wait``: the task's own queue's single active consumer buffers them as
    one worker does (docs/fleet.md), so its stop flushes them too.
    """
    with monkeypatch.context() as env:
        env.setenv("TB_WAIT_IN_BROKER", "1" if wait else "")
        producer = make_app_broker(rabbitmq_url, redis_url, queue, qos=10)
    collect = declare(producer, 1000, 3600)
    held_in = batch_queue_name(queue, "collect") if wait else queue
    await producer.startup()
    try:
        worker = start_worker(batch_size=1000, batch_timeout=3600, wait=wait)
        sent = [await collect.kiq(item) for item in range(30)]

        async def all_held() -> bool:
            return await consumers_and_ready(observer, held_in) == (1, 0)

        await eventually(all_held, 20, "the worker holds the 30 messages")
        worker.stop(timeout=15)
        assert worker.process.returncode == 0, worker.output()
        assert await recorded(redis, queue) == Counter(range(30))
        for task in sent:
            result = await task.wait_result(timeout=5, check_interval=0.05)
            assert not result.is_err, result.error
        assert await consumers_and_ready(observer, held_in) == (0, 0)  # all acked
    finally:
        await producer.shutdown()
