"""The NATS JetStream transport against a real NATS server (``NATS_URL``).

Each test has its own stream, subject and durable consumer, deleted
afterwards. Workers run taskiq's own Receiver in-process, or are real
``taskiq worker`` processes running tests/integration/nats_app.py (results
and a record of every batch in the real Redis).
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, ConsumerInfo
from nats.js.errors import NotFoundError
from redis.asyncio import Redis
from taskiq import BrokerMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq.kicker import AsyncKicker
from taskiq_nats import PullBasedJetStreamBroker, PushBasedJetStreamBroker

from taskiq_batching import BatchingMiddleware, _compat, batch_task
from taskiq_batching.transports import transport_for
from taskiq_batching.transports.generic import GenericTransport
from taskiq_batching.transports.nats import NatsTransport
from taskiq_batching.transports.nats_sender import NatsSender
from tests.helpers import running_worker
from tests.integration.nats_app import make_broker as make_app_broker
from tests.integration.nats_durables import states
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MakeBroker = Callable[..., PullBasedJetStreamBroker]


@pytest.fixture
async def make_broker(nats_url: str) -> AsyncIterator[MakeBroker]:
    """Brokers on one new stream, subject and durable; the stream is deleted after."""
    name = f"tb-{uuid.uuid4().hex[:10]}"
    brokers: list[PullBasedJetStreamBroker] = []

    def make(**consumer: Any) -> PullBasedJetStreamBroker:
        broker = PullBasedJetStreamBroker(
            nats_url,
            subject=f"{name}.tasks",
            stream_name=name,
            durable=name,
            consumer_config=ConsumerConfig(durable_name=name, **consumer),
        )
        broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
        broker.add_middlewares(BatchingMiddleware())
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        if broker.client.is_connected:
            await broker.client.close()
    client = await nats.connect(nats_url)
    try:
        with contextlib.suppress(NotFoundError):  # never started
            await client.jetstream().delete_stream(name)
    finally:
        await client.close()


async def consumer_info(broker: PullBasedJetStreamBroker) -> ConsumerInfo:
    """The durable's state, through a connection of its own."""
    client = await nats.connect(broker.servers)
    try:
        info: ConsumerInfo = await client.jetstream().consumer_info(
            broker.stream_name, broker.durable
        )
        return info
    finally:
        await client.close()


async def publish(broker: PullBasedJetStreamBroker, count: int) -> None:
    for index in range(count):
        await broker.js.publish(broker.subject, str(index).encode())


async def started(broker: PullBasedJetStreamBroker) -> NatsTransport:
    await broker.startup()
    transport = transport_for(broker)
    assert isinstance(transport, NatsTransport)
    return transport


async def read_all(transport: NatsTransport, limit: int, count: int) -> list[Any]:
    deliveries: list[Any] = []
    while len(deliveries) < count:
        chunk = await transport.read(limit)
        assert len(chunk) <= limit
        deliveries.extend(chunk)
    return deliveries


def test_only_a_pull_broker_listening_as_shipped_gets_it() -> None:
    class Own(PullBasedJetStreamBroker):
        """A subclass that changes nothing."""

    class OwnListener(PullBasedJetStreamBroker):
        async def listen(self) -> Any:  # pragma: no cover - never called
            yield b""

    url = "nats://127.0.0.1:4222"
    assert type(transport_for(PullBasedJetStreamBroker(url))) is NatsTransport
    assert type(transport_for(Own(url))) is NatsTransport
    assert type(transport_for(OwnListener(url))) is GenericTransport
    assert type(transport_for(PushBasedJetStreamBroker(url))) is GenericTransport


async def test_reads_come_in_chunks_within_the_limit(make_broker: MakeBroker) -> None:
    broker = make_broker()
    transport = await started(broker)
    await publish(broker, 35)
    deliveries = await read_all(transport, 10, 35)
    assert [int(d.data) for d in deliveries] == list(range(35))
    assert transport.outstanding == 35
    assert await transport.read(10) == []  # idle: returns within its timeout
    await transport.ack([d.handle for d in deliveries])
    await transport.close()


async def test_a_delivery_carries_the_time_the_stream_stored_it(
    make_broker: MakeBroker,
) -> None:
    """``sent_at`` is the stream's timestamp (the server's clock: this machine's)."""
    broker = make_broker()
    transport = await started(broker)
    before = time.time()
    await publish(broker, 3)  # each publish waits for the stream's ack
    after = time.time()
    deliveries = await read_all(transport, 10, 3)
    for delivery in deliveries:
        assert delivery.sent_at is not None
        assert before - 0.05 <= delivery.sent_at <= after + 0.05
    await transport.ack([d.handle for d in deliveries])
    await transport.close()


async def test_many_acks_leave_nothing_pending(make_broker: MakeBroker) -> None:
    broker = make_broker()
    transport = await started(broker)
    await publish(broker, 60)
    deliveries = await read_all(transport, 100, 60)
    assert (await consumer_info(broker)).num_ack_pending == 60
    await transport.ack([d.handle for d in deliveries])
    info = await consumer_info(broker)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert transport.outstanding == 0
    await transport.close()


async def test_released_messages_are_nakked_and_come_back(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    transport = await started(broker)
    await publish(broker, 5)
    deliveries = await read_all(transport, 100, 5)
    await transport.release(deliveries)
    assert transport.outstanding == 0
    again = await read_all(transport, 100, 5)
    assert sorted(int(d.data) for d in again) == list(range(5))
    await transport.ack([d.handle for d in again])
    assert (await consumer_info(broker)).num_ack_pending == 0
    await transport.close()


async def test_prefetch_is_max_ack_pending_and_reads_stay_within_it(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(max_ack_pending=7)
    transport = await started(broker)
    await publish(broker, 10)
    first = await read_all(transport, 5, 5)
    assert transport.prefetch == 7
    second = await transport.read(100)
    assert len(second) == 2  # only what max_ack_pending leaves room for
    await transport.ack([d.handle for d in first + second])
    rest = await read_all(transport, 100, 3)
    await transport.ack([d.handle for d in rest])
    await transport.close()


async def test_a_held_message_redelivered_is_not_taken_twice(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(ack_wait=1)
    transport = await started(broker)
    await publish(broker, 1)
    [held] = await read_all(transport, 10, 1)
    keepalive = transport._keepalive
    assert keepalive is not None
    keepalive.cancel()  # as if the worker stalled past ack_wait
    first_reply = held.handle.reply

    async def redelivery_received() -> bool:
        # A read's pull request brings the redelivery after ack_wait; it
        # is noted on the held one (its new reply), never read again.
        assert await transport.read(10) == []  # the redelivery is dropped
        return bool(held.handle.reply != first_reply)

    await eventually(redelivery_received, 10, "the redelivery after ack_wait")
    assert transport.outstanding == 1
    await transport.ack([held.handle])

    async def acked() -> bool:
        # Unacked, it would stay pending (and come back every ack_wait).
        return (await consumer_info(broker)).num_ack_pending == 0

    await eventually(acked, 10, "the ack through the redelivery")
    assert await transport.read(10) == []  # and the ack took
    await transport.close()


async def test_held_messages_are_kept_alive_past_ack_wait(
    make_broker: MakeBroker,
) -> None:
    ack_wait_seconds = 1.0  # in progress sent every ack_wait / 3
    broker = make_broker(ack_wait=ack_wait_seconds)
    transport = await started(broker)
    await publish(broker, 3)
    held = await read_all(transport, 10, 3)
    await asyncio.sleep(2.5 * ack_wait_seconds)  # the hold under test, not a barrier
    assert (await consumer_info(broker)).num_redelivered == 0
    await transport.ack([d.handle for d in held])
    await transport.close()


async def test_send_publishes_as_kick(make_broker: MakeBroker) -> None:
    broker = make_broker()
    transport = await started(broker)
    await NatsSender(broker).send(
        [
            BrokerMessage(
                task_id=str(i), task_name="t", message=str(i).encode(), labels={}
            )
            for i in range(150)
        ]
    )
    deliveries = await read_all(transport, 100, 150)
    assert [int(d.data) for d in deliveries] == list(range(150))
    await transport.ack([d.handle for d in deliveries])
    await transport.close()


async def test_size_only_batches_over_max_ack_pending_do_not_wedge(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(max_ack_pending=50)
    seen: list[int] = []
    sizes: list[int] = []

    @batch_task(broker, batch_size=100)
    async def collect(items: list[int]) -> None:
        seen.extend(items)
        sizes.append(len(items))

    await broker.startup()
    async with running_worker(broker, run_startup=False):
        for i in range(120):
            await collect.kiq(i)
        # Each time 50 are unacked, the server sends no more: they are flushed.
        for _ in range(300):
            if len(seen) >= 100:
                break
            await asyncio.sleep(0.05)
        assert len(seen) >= 100
        # The last 20 wait for their buffer to fill: the stop flushes them.
        for _ in range(100):
            if (await consumer_info(broker)).num_pending == 0:
                break
            await asyncio.sleep(0.05)
    assert sorted(seen) == list(range(120))
    assert max(sizes) <= 50
    info = await consumer_info(broker)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_hold_over_ack_wait_warns_and_runs_each_item_once(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker(ack_wait=1)
    seen: list[int] = []

    @batch_task(broker, batch_size=1000, batch_timeout=2.5)
    async def collect(items: list[int]) -> None:
        seen.extend(items)

    await broker.startup()
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        async with running_worker(broker, run_startup=False):
            tasks = [await collect.kiq(i) for i in range(50)]
            for task in tasks:
                assert not (await task.wait_result(timeout=15)).is_err
    assert "ack_wait=1 s" in caplog.text
    assert Counter(seen) == Counter(range(50))
    info = await consumer_info(broker)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert info.num_redelivered == 0


async def test_a_stop_flushes_buffers_and_leaves_nothing_unacked(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    seen: list[int] = []

    @batch_task(broker, batch_size=1000, batch_timeout=3600)
    async def collect(items: list[int]) -> None:
        seen.extend(items)

    @broker.task
    async def plain(value: int) -> int:
        return value

    await broker.startup()
    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    async with running_worker(broker, run_startup=False):
        for i in range(30):
            await collect.kiq(i)
        plain_task = await plain.kiq(7)
        assert (await plain_task.wait_result(timeout=10)).return_value == 7
        for _ in range(100):
            if batcher.buffered() == 30:
                break
            await asyncio.sleep(0.05)
        assert seen == []
    assert sorted(seen) == list(range(30))
    info = await consumer_info(broker)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_one_chunk_is_read_ahead_and_a_close_naks_it(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    transport = await started(broker)
    await publish(broker, 30)
    first = await read_all(transport, 10, 10)

    async def next_chunk_delivered() -> bool:
        return (await consumer_info(broker)).num_ack_pending == 20

    # The next 10 come without a read (one request ahead), and no more.
    await eventually(next_chunk_delivered, 10, "the chunk read ahead")
    await asyncio.sleep(0.3)
    assert (await consumer_info(broker)).num_ack_pending == 20
    assert transport.outstanding == 10  # received is not read
    await transport.ack([d.handle for d in first])
    await transport.close()
    # The 10 read ahead were nak'ed: delivered again at once (ack_wait is 30 s).
    again = await started(make_broker())
    rest = await read_all(again, 100, 20)
    assert sorted(int(d.data) for d in rest) == list(range(10, 30))
    await again.ack([d.handle for d in rest])
    info = await consumer_info(broker)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    await again.close()


# --- real ``taskiq worker`` processes (tests/integration/nats_app.py) -------


@pytest.fixture
async def stream(nats_url: str, queue: str) -> AsyncIterator[str]:
    """The test's stream (named as its queue) and its batch stream, deleted after."""
    yield queue
    client = await nats.connect(nats_url)
    try:
        for name in (queue, f"{queue}-batch"):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(name)
    finally:
        await client.close()


#: Both paths: each worker buffers its reads (``today``), or batched
#: messages wait in the broker under a lease (``wait``, docs/fleet.md).
PATHS = pytest.mark.parametrize("wait", [False, True], ids=["today", "wait"])


@pytest.fixture
def start_worker(
    nats_url: str, redis_url: str, stream: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(
        batch_size: int, batch_timeout: float, ack_wait: float, wait: bool
    ) -> Worker:
        env = {
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "TB_QUEUE": stream,
            "TB_ACK_WAIT": str(ack_wait),
            "TB_BATCH_SIZE": str(batch_size),
            "TB_BATCH_TIMEOUT": str(batch_timeout),
            "TB_WAIT_IN_BROKER": "1" if wait else "",
        }
        worker = Worker(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            app="tests.integration.nats_app:broker",
            args=("--ack-type", "when_saved"),
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill9()


def app_producer(
    monkeypatch: pytest.MonkeyPatch, wait: bool, *args: Any, **kwargs: Any
) -> Any:
    """The app's broker in the test, on the worker's path."""
    with monkeypatch.context() as env:
        env.setenv("TB_WAIT_IN_BROKER", "1" if wait else "")
        return make_app_broker(*args, **kwargs)


async def app_consumer(nats_url: str, stream: str) -> ConsumerInfo:
    client = await nats.connect(nats_url)
    try:
        info: ConsumerInfo = await client.jetstream().consumer_info(stream, stream)
        return info
    finally:
        await client.close()


def held_by_a_worker(wait: bool, count: int) -> list[tuple[int, int]]:
    """The states when one worker holds ``count`` messages, unacked.

    ``today``: read from the main durable into its buffer. ``wait``: moved
    to the batch stream (the main durable's originals acked) and held in
    the round its lease request is filling.
    """
    return [(0, 0), (count, 0)] if wait else [(count, 0)]


async def recorded(redis: Redis, stream: str) -> Counter[int]:
    """How many times each item ran in a batch."""
    raw = await redis.lrange(f"{stream}:batches", 0, -1)
    return Counter(item for batch in raw for item in json.loads(batch)["items"])


@PATHS
async def test_sigkill_with_a_half_full_buffer_loses_nothing(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    producer = app_producer(monkeypatch, wait, nats_url, redis_url, stream, ack_wait=2)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        first = start_worker(batch_size=1000, batch_timeout=3600, ack_wait=2, wait=wait)
        sent = [await collect.kiq(item) for item in range(50)]

        async def all_held() -> bool:
            return await states(nats_url, stream) == held_by_a_worker(wait, 50)

        await eventually(all_held, 20, "the worker holds the 50 messages")
        first.kill9()  # a crash with 50 messages in its buffer (or round)
        replacement = start_worker(
            batch_size=10, batch_timeout=0.2, ack_wait=2, wait=wait
        )
        for task in sent:  # redelivered once ack_wait (2 s) has passed
            result = await task.wait_result(timeout=30, check_interval=0.05)
            assert not result.is_err, result.error
        assert await recorded(redis, stream) == Counter(range(50))

        async def all_acked() -> bool:
            return await states(nats_url, stream) == held_by_a_worker(wait, 0)

        await eventually(all_acked, 10, "every message acked")
        replacement.stop(timeout=15)
        assert replacement.process.returncode == 0, replacement.output()
    finally:
        await producer.shutdown()


@PATHS
async def test_sigterm_runs_or_hands_back_what_it_holds_and_exits(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
) -> None:
    """A stop leaves nothing unacked to wait for ``ack_wait`` (30 s).

    ``today``: the 30 items wait in the worker's buffer, which the stop
    flushes: they run. ``wait``: they wait in the broker (the round the
    lease request fills is not a batch until full or due): the stop hands
    them back at once (nak), and the next worker runs them, each once.
    """
    producer = app_producer(monkeypatch, wait, nats_url, redis_url, stream, 30)
    await producer.startup()
    try:
        collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
        worker = start_worker(
            batch_size=1000, batch_timeout=3600, ack_wait=30, wait=wait
        )
        sent = [await collect.kiq(item) for item in range(30)]

        async def all_held() -> bool:
            return await states(nats_url, stream) == held_by_a_worker(wait, 30)

        await eventually(all_held, 20, "the worker holds the 30 messages")
        assert await recorded(redis, stream) == Counter()
        worker.stop(timeout=15)
        assert worker.process.returncode == 0, worker.output()
        if wait:
            assert await recorded(redis, stream) == Counter()  # none was due
            worker = start_worker(
                batch_size=10, batch_timeout=0.2, ack_wait=30, wait=wait
            )
        # Within 10 s: handed back (nak), not left to ack_wait (30 s).
        for task in sent:
            result = await task.wait_result(timeout=10, check_interval=0.05)
            assert not result.is_err, result.error
        assert await recorded(redis, stream) == Counter(range(30))

        async def all_acked() -> bool:
            return await states(nats_url, stream) == held_by_a_worker(wait, 0)

        await eventually(all_acked, 10, "every message acked")
    finally:
        await producer.shutdown()


async def test_compat_publishes_many_with_the_installed_client(nats_url: str) -> None:
    """``_compat.nats_publish_each`` against the installed nats-py."""
    client = await nats.connect(nats_url)
    try:
        inbox = client.new_inbox()
        got: list[tuple[str, bytes]] = []
        done = asyncio.Event()

        async def received(message: Any) -> None:
            got.append((message.subject, message.data))
            if len(got) == 3:
                done.set()

        await client.subscribe(f"{inbox}.*", cb=received)
        await client.flush()
        subjects = [f"{inbox}.{index}" for index in range(3)]
        assert await _compat.nats_publish_each(client, subjects, b"+ACK")
        await client.flush()
        await asyncio.wait_for(done.wait(), 10)
        assert sorted(got) == [(subject, b"+ACK") for subject in subjects]
        assert client.stats["out_msgs"] == 3
    finally:
        await client.close()


async def test_compat_finds_the_pull_subject(make_broker: MakeBroker) -> None:
    """``_compat.nats_pull_subject`` against the installed nats-py."""
    broker = make_broker()
    await broker.startup()
    subject = _compat.nats_pull_subject(broker.consumer)
    assert subject == f"$JS.API.CONSUMER.MSG.NEXT.{broker.stream_name}.{broker.durable}"
