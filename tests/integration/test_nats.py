"""The NATS JetStream transport against a real NATS server (``NATS_URL``).

Each test has its own stream, subject and durable consumer, deleted
afterwards. Workers run taskiq's own Receiver in-process.
"""

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, ConsumerInfo
from nats.js.errors import NotFoundError
from taskiq import BrokerMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq_nats import PullBasedJetStreamBroker, PushBasedJetStreamBroker

from taskiq_batching import BatchingMiddleware, _compat, batch_task
from taskiq_batching.transports import transport_for
from taskiq_batching.transports.generic import GenericTransport
from taskiq_batching.transports.nats import NatsTransport
from tests.helpers import running_worker

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
    await asyncio.sleep(1.5)
    assert await transport.read(10) == []  # the redelivery is dropped
    assert transport.outstanding == 1
    await transport.ack([held.handle])
    await asyncio.sleep(1.5)
    assert await transport.read(10) == []  # and the ack took
    assert (await consumer_info(broker)).num_ack_pending == 0
    await transport.close()


async def test_held_messages_are_kept_alive_past_ack_wait(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(ack_wait=1)
    transport = await started(broker)
    await publish(broker, 3)
    held = await read_all(transport, 10, 3)
    await asyncio.sleep(2.5)
    assert (await consumer_info(broker)).num_redelivered == 0
    await transport.ack([d.handle for d in held])
    await transport.close()


async def test_send_publishes_as_kick(make_broker: MakeBroker) -> None:
    broker = make_broker()
    transport = await started(broker)
    await transport.send(
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
    broker = make_broker(ack_wait=2)
    seen: list[int] = []

    @batch_task(broker, batch_size=1000, batch_timeout=5)
    async def collect(items: list[int]) -> None:
        seen.extend(items)

    await broker.startup()
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        async with running_worker(broker, run_startup=False):
            tasks = [await collect.kiq(i) for i in range(50)]
            for task in tasks:
                assert not (await task.wait_result(timeout=15)).is_err
    assert "ack_wait=2 s" in caplog.text
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


async def test_asyncios_own_timeout_from_a_fetch_is_an_idle_read() -> None:
    """nats-py's fetch of many raises asyncio's TimeoutError, not its own, when
    its timeout runs out between its two requests."""

    class Consumer:
        async def consumer_info(self) -> Any:
            return SimpleNamespace(
                config=SimpleNamespace(max_ack_pending=10, ack_wait=30.0)
            )

        async def fetch(self, batch: int, timeout: float) -> list[Any]:
            raise asyncio.TimeoutError

    broker = PullBasedJetStreamBroker("nats://127.0.0.1:4222")
    broker.consumer = Consumer()  # type: ignore[assignment]
    transport = NatsTransport(broker)
    assert await transport.read(5) == []
    assert transport.prefetch == 10
    await transport.close()


async def test_compat_takes_what_the_client_buffered(make_broker: MakeBroker) -> None:
    """``_compat.nats_take_buffered`` against the installed nats-py."""
    broker = make_broker()
    await started(broker)
    assert _compat.nats_take_buffered(broker.consumer) == []
    await publish(broker, 3)
    # A pull request sent as fetch sends it, with no fetch waiting for it:
    # its messages land in the subscription's buffer.
    await broker.client.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{broker.stream_name}.{broker.durable}",
        b'{"batch": 3, "no_wait": true}',
        reply=broker.consumer._deliver,
    )
    await broker.client.flush()
    taken: list[Any] = []
    for _ in range(50):
        taken += _compat.nats_take_buffered(broker.consumer)
        if len(taken) == 3:
            break
        await asyncio.sleep(0.02)
    assert [m.data for m in taken] == [b"0", b"1", b"2"]
    assert broker.consumer._sub._pending_size == 0
