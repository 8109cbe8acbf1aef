"""The generic transport: any broker through its own ``listen()``, acks and ``kick``."""

import asyncio
import gc
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from taskiq import AckableMessage, BrokerMessage, TaskiqResult
from taskiq.brokers.inmemory_broker import InmemoryResultBackend

from taskiq_batching.transports import ResultWriter, Transport, generic, sender_for
from taskiq_batching.transports.generic import (
    SEND_CONCURRENCY,
    GenericResults,
    GenericTransport,
    ack_each,
)
from tests.helpers import QueueBroker

pytestmark = pytest.mark.timeout(30)


def message(task_id: str, data: bytes = b"m") -> BrokerMessage:
    return BrokerMessage(task_id=task_id, task_name="t", message=data, labels={})


class Acks:
    """Ack callables that record what they acknowledged."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    def of(self, name: str) -> Callable[[], Any]:
        async def ack() -> None:
            self.acked.append(name)

        return ack


def listener(
    *yielded: bytes | AckableMessage,
) -> Callable[[], AsyncGenerator[Any, None]]:
    async def listen() -> AsyncGenerator[Any, None]:
        for item in yielded:
            yield item

    return listen


def test_it_is_a_transport() -> None:
    transport: Transport = GenericTransport(QueueBroker())
    assert transport.name == "generic"
    assert transport.prefetch is None
    assert transport.reclaim_interval is None
    assert transport.acknowledges


async def test_one_delivery_per_read_with_its_own_ack() -> None:
    broker = QueueBroker()
    for index in range(3):
        await broker.kick(message(str(index), f"m{index}".encode()))
    transport = GenericTransport(broker)
    chunks = [await transport.read(100) for _ in range(3)]
    assert [len(chunk) for chunk in chunks] == [1, 1, 1]
    assert [chunk[0].data for chunk in chunks] == [b"m0", b"m1", b"m2"]
    assert transport.outstanding == 3
    assert transport.acknowledges
    await transport.ack([chunks[0][0].handle, chunks[2][0].handle])
    assert broker.acked == ["0", "2"]
    assert transport.outstanding == 1
    await transport.close()


async def test_it_reads_the_listener_it_was_given() -> None:
    acks = Acks()
    transport = GenericTransport(
        QueueBroker(), listener(b"raw", AckableMessage(data=b"a", ack=acks.of("a")))
    )
    (raw,) = await transport.read(1)
    assert (raw.data, raw.handle, raw.original) == (b"raw", None, b"raw")
    assert not transport.acknowledges  # a broker that yields bytes has no acks
    (ackable,) = await transport.read(1)
    assert ackable.data == b"a"
    assert isinstance(ackable.original, AckableMessage)
    with pytest.raises(StopAsyncIteration):
        await transport.read(1)


async def test_interrupt_returns_a_late_delivery_the_listener_hands_over() -> None:
    started = asyncio.Event()

    async def listen() -> AsyncGenerator[bytes, None]:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            yield b"late"  # taken from the broker while being stopped
        yield b"never read"

    transport = GenericTransport(QueueBroker(), listen)
    reading = asyncio.ensure_future(transport.read(1))
    await started.wait()
    late = await transport.interrupt(reading)
    assert [d.data for d in late] == [b"late"]
    await transport.close()


async def test_interrupt_of_a_listener_that_simply_stops_returns_nothing() -> None:
    started = asyncio.Event()

    async def listen() -> AsyncGenerator[bytes, None]:
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    transport = GenericTransport(QueueBroker(), listen)
    reading = asyncio.ensure_future(transport.read(1))
    await started.wait()
    assert await transport.interrupt(reading) == []
    assert reading.cancelled()


async def test_interrupt_of_a_listener_that_ends_returns_nothing() -> None:
    started = asyncio.Event()

    async def listen() -> AsyncGenerator[bytes, None]:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return
        yield b"never"

    transport = GenericTransport(QueueBroker(), listen)
    reading = asyncio.ensure_future(transport.read(1))
    await started.wait()
    assert await transport.interrupt(reading) == []


async def test_interrupt_cancels_again_a_read_that_lost_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As redis-py's commands on Python 3.11 can (asyncio.wait_for drops a
    # cancellation arriving as the command completes): taskiq-redis's
    # listener then blocks in its next read, until a message comes.
    monkeypatch.setattr(generic, "CANCEL_RETRY_SECONDS", 0.01)
    started = asyncio.Event()
    lost: list[int] = []

    async def listen() -> AsyncGenerator[bytes, None]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lost.append(1)  # swallowed: the next wait blocks as if none came
        await asyncio.Event().wait()
        yield b"never"

    transport = GenericTransport(QueueBroker(), listen)
    reading = asyncio.ensure_future(transport.read(1))
    await started.wait()
    assert await asyncio.wait_for(transport.interrupt(reading), 5) == []
    assert lost == [1]
    assert reading.cancelled()


async def test_interrupt_reraises_the_listeners_error() -> None:
    started = asyncio.Event()

    async def listen() -> AsyncGenerator[bytes, None]:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("lost while stopping") from None
        yield b"never"

    transport = GenericTransport(QueueBroker(), listen)
    reading = asyncio.ensure_future(transport.read(1))
    await started.wait()
    with pytest.raises(ConnectionError, match="lost while stopping"):
        await transport.interrupt(reading)


async def test_close_propagates_the_listeners_close_error() -> None:
    async def listen() -> AsyncGenerator[bytes, None]:
        try:
            yield b"one"
            yield b"two"
        finally:
            raise RuntimeError("channel close failed")

    transport = GenericTransport(QueueBroker(), listen)
    await transport.read(1)
    with pytest.raises(RuntimeError, match="channel close failed"):
        await transport.close()
    await transport.close()  # closed once: nothing left to close


async def test_close_before_any_read_does_nothing() -> None:
    calls: list[int] = []

    async def listen() -> AsyncGenerator[bytes, None]:
        calls.append(1)
        yield b"never"

    await GenericTransport(QueueBroker(), listen).close()
    assert calls == []


async def test_without_a_prefetch_the_receiver_gets_the_brokers_own_delivery() -> None:
    acks = Acks()
    original = AckableMessage(data=b"a", ack=acks.of("a"))
    transport = GenericTransport(QueueBroker(), listener(original))
    (delivery,) = await transport.read(1)
    assert transport.outstanding == 1
    assert transport.for_receiver(delivery) is original
    assert transport.outstanding == 0  # nothing depends on counting it


async def test_with_a_prefetch_outstanding_counts_acks_until_they_happen() -> None:
    acks = Acks()
    transport = GenericTransport(
        QueueBroker(),
        listener(
            AckableMessage(data=b"a", ack=acks.of("a")),
            AckableMessage(data=b"b", ack=acks.of("b")),
            AckableMessage(data=b"c", ack=acks.of("c")),
        ),
        prefetch=3,
    )
    deliveries = [(await transport.read(1))[0] for _ in range(3)]
    assert transport.outstanding == 3
    handed = transport.for_receiver(deliveries[0])
    assert isinstance(handed, AckableMessage)
    assert handed.data == b"a"
    assert transport.outstanding == 3  # the Receiver has not acked it yet
    await handed.ack()  # type: ignore[misc]
    assert acks.acked == ["a"]
    assert transport.outstanding == 2
    await transport.ack([d.handle for d in deliveries[1:]])
    assert sorted(acks.acked) == ["a", "b", "c"]
    assert transport.outstanding == 0


async def test_bytes_for_the_receiver_are_the_bytes() -> None:
    transport = GenericTransport(QueueBroker(), listener(b"raw"), prefetch=5)
    (delivery,) = await transport.read(1)
    assert transport.for_receiver(delivery) == b"raw"


async def test_a_sync_ack_is_awaited_as_taskiq_would() -> None:
    acked: list[int] = []
    transport = GenericTransport(
        QueueBroker(),
        listener(AckableMessage(data=b"a", ack=lambda: acked.append(1))),
        prefetch=1,
    )
    (delivery,) = await transport.read(1)
    handed = transport.for_receiver(delivery)
    assert isinstance(handed, AckableMessage)
    await handed.ack()  # type: ignore[misc]
    assert acked == [1]


async def test_ack_each_runs_every_ack_and_raises_the_first_failure() -> None:
    acks = Acks()

    async def fails() -> None:
        raise ConnectionError("first")

    async def fails_too() -> None:
        raise ValueError("second")

    with pytest.raises(ConnectionError, match="first"):
        await ack_each([acks.of("a"), fails, fails_too, acks.of("b")])
    assert acks.acked == ["a", "b"]


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_failing_sync_ack_does_not_stop_the_others() -> None:
    acks = Acks()

    def fails() -> None:
        raise ConnectionError("channel closed")

    try:
        with pytest.raises(ConnectionError, match="channel closed"):
            await ack_each([acks.of("a"), fails, acks.of("b")])
        assert acks.acked == ["a", "b"]
    finally:
        gc.collect(1)  # the never-awaited coroutines (young) warn here, not later


async def test_reclaim_release_and_check_do_nothing() -> None:
    broker = QueueBroker()
    await broker.kick(message("1"))
    transport = GenericTransport(broker)
    (delivery,) = await transport.read(1)
    assert await transport.reclaim() == []
    await transport.release([delivery])
    transport.check([])
    assert broker.acked == []  # left unacked: the broker redelivers it


async def test_the_generic_sender_kicks_in_order_a_bounded_number_at_once() -> None:
    running = 0
    most = 0

    class Counting(QueueBroker):
        async def kick(self, message: BrokerMessage) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0)  # every kick of a chunk starts before any ends
            running -= 1
            await super().kick(message)

    broker = Counting()
    total = SEND_CONCURRENCY + 5
    await sender_for(broker).send([message(str(i)) for i in range(total)])
    assert [broker.queue.get_nowait().task_id for _ in range(total)] == [
        str(i) for i in range(total)
    ]
    assert most == SEND_CONCURRENCY


async def test_generic_results_store_each_and_report_failures() -> None:
    backend: InmemoryResultBackend[Any] = InmemoryResultBackend(max_stored_results=-1)

    class Refusing(InmemoryResultBackend[Any]):
        async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
            if task_id == "bad":
                raise ConnectionError("refused")
            await backend.set_result(task_id, result)

    writer: ResultWriter = GenericResults(Refusing())
    result: TaskiqResult[int] = TaskiqResult(
        is_err=False, return_value=1, execution_time=0.1
    )
    failures = await writer.write([("a", result), ("bad", result), ("b", result)])
    assert [(index, str(error)) for index, error in failures] == [(1, "refused")]
    assert (await backend.get_result("a")).return_value == 1
    assert (await backend.get_result("b")).return_value == 1
