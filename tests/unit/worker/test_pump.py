"""The pump under taskiq's own Receiver, as ``taskiq worker`` runs it."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker, TaskiqDepends
from taskiq.kicker import AsyncKicker
from taskiq.receiver import Receiver
from taskiq_redis import ListQueueBroker

from taskiq_batching import BatchInfo, BatchingMiddleware, BatchItemError, batch_task
from taskiq_batching.transports import generic
from taskiq_batching.transports.generic import GenericTransport
from taskiq_batching.worker import giving, parking
from tests.helpers import (
    ObservedSemaphore,
    PrefetchQueueBroker,
    QueueBroker,
    Recorder,
    push_raw,
    queue_broker,
    running_worker,
)

pytestmark = pytest.mark.timeout(30)


# --- plain tasks are taskiq's ------------------------------------------------


async def test_plain_messages_are_not_read_ahead_of_the_receiver() -> None:
    broker = queue_broker()
    started, release = asyncio.Event(), asyncio.Event()

    @broker.task
    async def slow() -> None:
        started.set()
        await release.wait()

    @batch_task(broker, batch_size=10, batch_timeout=5)
    async def batched(items: list[int]) -> None: ...

    for _ in range(3):
        await slow.kiq()
    receiver = Receiver(broker, max_async_tasks=1, max_prefetch=0)
    slots = ObservedSemaphore(1)
    receiver.sem_prefetch = slots
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await started.wait()
    assert await slots.acquire_attempts.get() == 1
    assert await slots.acquire_attempts.get() == 2  # the Receiver waits for a slot
    assert broker.taken == 1
    assert broker.queue.qsize() == 2
    release.set()
    finish.set()
    await listening


@pytest.fixture
def list_broker() -> ListQueueBroker:
    fake: dict[str, Any] = {
        "connection_class": fakeredis.FakeAsyncRedisConnection,
        "server": fakeredis.FakeServer(),
    }
    broker = ListQueueBroker("redis://fake:6379/0", queue_name="pump-list", **fake)
    return broker.with_middlewares(BatchingMiddleware())


async def test_a_list_worker_leaves_plain_messages_it_cannot_run_in_redis(
    list_broker: ListQueueBroker,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    @list_broker.task(task_name="slow")
    async def slow(item: int) -> None:
        ran.append(item)
        started.set()
        await release.wait()

    @batch_task(list_broker, batch_size=10, batch_timeout=5, task_name="batched")
    async def batched(items: list[int]) -> None: ...

    for item in range(20):
        await (slow.kiq(item) if item % 4 == 2 else batched.kiq(item))
    receiver = Receiver(list_broker, max_async_tasks=1, max_prefetch=0)
    slots = ObservedSemaphore(1)
    receiver.sem_prefetch = slots
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await started.wait()
    assert await slots.acquire_attempts.get() == 1
    assert await slots.acquire_attempts.get() == 2
    async with Redis(connection_pool=list_broker.connection_pool) as redis:
        left = await redis.lrange("pump-list", 0, -1)
    plain_left = sum(json.loads(raw)["task_name"] == "slow" for raw in left)
    assert ran == [2]
    assert plain_left == 4  # every plain message but the running one
    release.set()
    finish.set()
    await listening


async def test_a_late_delivery_at_stop_is_processed() -> None:
    reading = asyncio.Event()

    class LateBroker(QueueBroker):
        async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
            reading.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                message = self.queue.get_nowait()
                yield AckableMessage(data=message.message, ack=lambda: None)

    broker = LateBroker().with_middlewares(BatchingMiddleware())
    broker.with_result_backend(queue_broker().result_backend)
    seen = Recorder()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def batched(items: list[int]) -> int:
        seen.record(items)
        return len(items)

    task = await batched.kiq(7)
    async with running_worker(broker):
        await reading.wait()
    assert seen.batches == [[7]]
    assert (await task.wait_result(timeout=5)).return_value == 1


async def test_a_listener_error_propagates_after_its_messages_are_finished() -> None:
    class Failing(QueueBroker):
        async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
            async for delivery in super().listen():
                yield delivery
                if self.taken == 3:
                    raise ConnectionError("connection reset by peer")

    broker = Failing().with_middlewares(BatchingMiddleware())
    broker.with_result_backend(queue_broker().result_backend)
    seen = Recorder()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def batched(items: list[int]) -> None:
        seen.record(items)

    sent = [await batched.kiq(i) for i in range(3)]
    receiver = Receiver(broker)
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - checked below
        await receiver.listen(asyncio.Event())
    # taskiq 0.13 wraps it in an exception group.
    assert _contains(raised.value, "connection reset by peer")
    assert seen.batches == [[0, 1, 2]]
    assert sorted(broker.acked) == sorted(t.task_id for t in sent)


async def test_max_tasks_per_child_counts_batched_messages() -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=3600)
    async def batched(items: list[int]) -> None:
        seen.record(items)

    for i in range(10):
        await batched.kiq(i)
    receiver = Receiver(broker, max_tasks_to_execute=4)
    await receiver.listen(asyncio.Event())  # returns by itself, as taskiq's does
    assert seen.batches == [[0, 1, 2, 3]]
    assert broker.queue.qsize() == 6


async def test_wait_tasks_timeout_cuts_off_a_batch_that_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = queue_broker()
    entered = asyncio.Event()
    budget = 2.0

    @broker.task
    async def plain_forever() -> None:
        await asyncio.Event().wait()

    @batch_task(broker, batch_size=3)
    async def forever(items: list[int]) -> None:
        entered.set()
        await asyncio.Event().wait()

    receiver = Receiver(broker, wait_tasks_timeout=budget)
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await plain_forever.kiq()
    sent = [await forever.kiq(i) for i in range(3)]
    await entered.wait()
    started = time.monotonic()
    finish.set()
    with caplog.at_level(logging.WARNING):
        await listening
    took = time.monotonic() - started
    # Batches and plain tasks share one --wait-tasks-timeout, not one each.
    assert budget <= took < budget + 1.5, took
    assert broker.acked == []  # left to the broker, for redelivery
    assert "3 message(s) of batches still running" in caplog.text
    assert not await sent[0].is_ready()


async def test_a_batched_task_at_its_bound_never_holds_up_the_others() -> None:
    broker = queue_broker()
    release = asyncio.Event()

    @batch_task(broker, batch_size=2)
    async def slow(items: list[int]) -> None:
        await release.wait()

    @batch_task(broker, batch_size=2)
    async def fast(items: list[int]) -> int:
        return sum(items)

    @broker.task
    async def plain(item: int) -> int:
        return item

    async with running_worker(broker):
        for i in range(20):
            await slow.kiq(i)
        done_plain = await plain.kiq(5)
        done_fast = [await fast.kiq(i) for i in (1, 2)]
        # slow's batches still hang: the others went past them.
        assert (await done_plain.wait_result(timeout=10)).return_value == 5
        for task in done_fast:
            assert (await task.wait_result(timeout=10)).return_value == 3
        release.set()


async def test_a_long_backlog_of_a_slow_task_never_holds_up_the_others() -> None:
    # Stock taskiq (--max-async-tasks 100) reaches a plain message behind 300
    # slow ones after three turns of its slots; the pump parks the backlog
    # (small messages, far under the parking bounds) and reads on.
    broker = queue_broker()
    release = asyncio.Event()

    @batch_task(broker, batch_size=2)
    async def slow(items: list[int]) -> None:
        await release.wait()

    @batch_task(broker, batch_size=2)
    async def fast(items: list[int]) -> int:
        return sum(items)

    @broker.task
    async def plain(item: int) -> int:
        return item

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    async with running_worker(broker):
        try:
            for i in range(300):
                await slow.kiq(i)
            done_plain = await plain.kiq(5)
            done_fast = [await fast.kiq(i) for i in (1, 2)]
            assert (await done_plain.wait_result(timeout=10)).return_value == 5
            for task in done_fast:
                assert (await task.wait_result(timeout=10)).return_value == 3
            assert batcher.running[slow.task_name] == 1  # still hanging meanwhile
        finally:
            release.set()
        await broker.wait_acked(303)


async def test_parking_stops_reading_at_its_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A transport that cannot give messages back (no ``requeue``).
    monkeypatch.delattr(GenericTransport, "requeue")
    monkeypatch.setattr(parking, "PARK_BYTES", 10_000)
    broker = queue_broker()
    release = asyncio.Event()

    @batch_task(broker, batch_size=1, task_name="slow")
    async def slow(items: list[str]) -> None:
        await release.wait()

    sent = [await slow.kiq("x" * 1_000) for _ in range(50)]
    first = await broker.queue.get()
    size = len(first.message)
    await broker.queue.put(first)
    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    async with running_worker(broker):
        try:
            while not (batcher.running["slow"] == 1 and batcher.runner.backlog["slow"]):
                await batcher.changed()
            # Held: the running batch and the next one; then parked until
            # their bytes reach the bound, and the pump waits for room.
            parked = -(-10_000 // size)
            for _ in range(100):  # loop turns, not time: the pump would read
                await asyncio.sleep(0)
            assert broker.taken == 2 + parked, (broker.taken, size)
        finally:
            release.set()
        await broker.wait_acked(50)
    for task in sent:
        assert not (await task.wait_result(timeout=10)).is_err


async def test_past_parkings_byte_bound_the_rest_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parking, "PARK_BYTES", 10_000)
    monkeypatch.setattr(giving, "REST_SECONDS", 30.0)  # rests after one pass
    broker = queue_broker()
    release = asyncio.Event()

    @batch_task(broker, batch_size=1, task_name="slow")
    async def slow(items: list[str]) -> None:
        await release.wait()

    sent = [await slow.kiq("x" * 1_000) for _ in range(50)]
    first = await broker.queue.get()
    size = len(first.message)
    await broker.queue.put(first)
    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    # Held: the running batch and the next one; parked until their bytes
    # reach the bound; the rest given back to the queue, where it waits.
    kept = 2 + -(-10_000 // size)

    rested = asyncio.Event()
    pause = giving.GiveBacks.pause

    def watched(self: giving.GiveBacks, now: float) -> float:
        if self.passed:  # a whole pass over the queue: the worker rests
            rested.set()
        return pause(self, now)

    monkeypatch.setattr(giving.GiveBacks, "pause", watched)

    async with running_worker(broker):
        try:
            await asyncio.wait_for(rested.wait(), 10)
            assert broker.queue.qsize() == 50 - kept
            assert broker.taken > 50  # what was given back was read again
        finally:
            release.set()
        # Given back, then read again once the task has room: each runs.
        for task in sent:
            assert not (await task.wait_result(timeout=20)).is_err


async def test_batch_calls_at_once_never_exceed_the_bounds() -> None:
    broker = QueueBroker().with_middlewares(
        BatchingMiddleware(max_concurrent_batches=3)
    )
    broker.with_result_backend(queue_broker().result_backend)
    running, peak = 0, {"task": 0, "all": 0}
    by_task: dict[str, int] = {}

    def make(name: str) -> Any:
        @batch_task(
            broker,
            batch_size=4,
            batch_timeout=0.05,
            batch_concurrency=2,
            task_name=name,
        )
        async def handler(items: list[int], tenant: int) -> None:
            nonlocal running
            running += 1
            by_task[name] = by_task.get(name, 0) + 1
            peak["all"] = max(peak["all"], running)
            peak["task"] = max(peak["task"], by_task[name])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            running -= 1
            by_task[name] -= 1

        return handler

    handlers = [make(f"t{n}") for n in range(3)]
    async with running_worker(broker):
        for i in range(60):
            await handlers[i % 3].kiq(i, tenant=i)  # every message its own key
        await broker.wait_acked(60)
    assert peak["task"] <= 2
    assert peak["all"] <= 3
    assert peak["all"] > 1


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_an_interrupt_raised_by_a_batch_is_its_result(
    error: type[BaseException],
) -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int]) -> int:
        if items[0] == 0:
            raise error
        return len(items)

    async with running_worker(broker):
        failed = [await handler.kiq(i) for i in (0, 1)]
        after = [await handler.kiq(i) for i in (2, 3)]
        for task in failed:
            assert isinstance((await task.wait_result(timeout=10)).error, error)
        for task in after:  # the worker goes on
            assert (await task.wait_result(timeout=10)).return_value == 2


def _contains(error: BaseException, text: str) -> bool:
    nested = getattr(error, "exceptions", ())
    return text in str(error) or any(_contains(inner, text) for inner in nested)


# --- batching under the Receiver ----------------------------------------------


async def test_batches_are_not_capped_by_max_async_tasks() -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=60, batch_timeout=3600)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)

    async with running_worker(broker, max_async_tasks=10):
        for i in range(120):
            await handler.kiq(i)
        await broker.wait_acked(120)
    assert seen.sizes == [60, 60]
    assert seen.reasons == ["size", "size"]
    assert [item for batch in seen.batches for item in batch] == list(range(120))


async def test_size_only_batching_cannot_deadlock_on_small_capacity() -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=50)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    async with running_worker(broker, max_async_tasks=5):
        for i in range(100):
            await handler.kiq(i)
        await broker.wait_acked(100)
    assert seen.sizes == [50, 50]


async def test_keyed_buffers_under_pressure_flush_instead_of_wedging() -> None:
    broker = queue_broker()
    seen = Recorder()

    # Size-only, and every message has its own tenant: no buffer ever fills,
    # so only the bound on held messages (2 x batch_size) can flush them.
    @batch_task(broker, batch_size=3)
    async def handler(
        items: list[int], tenant: int, info: BatchInfo = TaskiqDepends()
    ) -> None:
        seen.record(items, info)

    async with running_worker(broker):
        for i in range(6):
            await handler.kiq(i, tenant=i)
        await broker.wait_acked(6)
    assert seen.reasons == ["pressure"] * 6
    assert sorted(item for batch in seen.batches for item in batch) == list(range(6))


@pytest.mark.parametrize("batch_timeout", [None, 3600])
async def test_a_shared_prefetch_below_the_batch_sizes_cannot_wedge_the_worker(
    batch_timeout: float | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = PrefetchQueueBroker(qos=10).with_middlewares(BatchingMiddleware())
    monkeypatch.setattr(
        "taskiq_batching.worker.hook.transport_for",
        lambda b, listen=None, **_: generic.GenericTransport(b, listen, prefetch=10),
    )
    first, second = Recorder(), Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=batch_timeout)
    async def one(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        first.record(items, info)

    @batch_task(broker, batch_size=100, batch_timeout=batch_timeout)
    async def two(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        second.record(items, info)

    async with running_worker(broker):
        for i in range(30):
            await one.kiq(i)
            await two.kiq(i)
        await broker.wait_acked(60)
    assert sum(first.sizes) == sum(second.sizes) == 30
    assert set(first.reasons + second.reasons) == {"pressure"}
    assert "at most 10 unacked messages" in caplog.text
    assert "shared by every task" in caplog.text


async def test_stop_flushes_buffers_and_acks_everything() -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=3600)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    async with running_worker(broker, stop_timeout=5):
        sent = [await handler.kiq(i) for i in range(7)]
        await BatchingMiddleware.of(broker).wait_buffered(7)
        assert seen.batches == []
    assert seen.batches == [list(range(7))]
    assert seen.reasons == ["shutdown"]
    assert sorted(broker.acked) == sorted(t.task_id for t in sent)
    for task in sent:
        assert (await task.wait_result(timeout=1)).return_value == 21


async def test_plain_tasks_and_garbage_pass_through_to_taskiq() -> None:
    broker = queue_broker()
    seen = Recorder()

    @broker.task
    async def plain(x: int) -> int:
        return x * 2

    @batch_task(broker, batch_size=4)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    async with running_worker(broker):
        batched = [await handler.kiq(1), await handler.kiq(2)]
        await push_raw(broker, b"\x00 not a message", "garbage")
        single = await plain.kiq(21)
        batched += [await handler.kiq(3), await handler.kiq(4)]
        await broker.wait_acked(6)
    assert "garbage" in broker.acked
    assert seen.batches == [[1, 2, 3, 4]]
    assert (await single.wait_result(timeout=1)).return_value == 42
    for task in batched:
        assert (await task.wait_result(timeout=1)).return_value == 10


async def test_bad_messages_never_fail_or_delay_their_batch_mates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = queue_broker()
    seen = Recorder()

    @batch_task(broker, batch_size=10, batch_timeout=3600)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    kicker: AsyncKicker[Any, Any] = AsyncKicker(handler.task_name, broker, {})
    good, bad = [], []
    async with running_worker(broker):
        for i in range(10):
            good.append(await handler.kiq(i))
            await push_raw(broker, b"\xff\xfe garbage %d" % i, f"garbage-{i}")
            bad.append(await kicker.kiq(f"not an int {i}"))
            bad.append(await kicker.kiq())  # no item at all
        await broker.wait_acked(40)
    # The ten good items filled one batch, as if nothing else had been sent.
    assert seen.batches == [list(range(10))]
    assert seen.reasons == ["size"]
    for task in good:
        assert (await task.wait_result(timeout=1)).return_value == 45
    for task in bad:
        error = (await task.wait_result(timeout=1)).error
        assert isinstance(error, BatchItemError)
        assert task.task_id in caplog.text
    assert all(f"garbage-{i}" in broker.acked for i in range(10))


async def test_a_failing_pre_execute_middleware_leaves_only_its_message_unacked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from taskiq import TaskiqMessage, TaskiqMiddleware

    class Picky(TaskiqMiddleware):
        def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
            if message.args == [13]:
                raise RuntimeError("unlucky")
            return message

    broker = queue_broker().with_middlewares(Picky())
    seen = Recorder()

    @batch_task(broker, batch_size=3)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    async with running_worker(broker):
        for item in (1, 13, 2, 3):
            await handler.kiq(item)
        await broker.wait_acked(3)
    assert seen.batches == [[1, 2, 3]]
    assert "left unacked: RuntimeError: unlucky" in caplog.text
    assert len(broker.acked) == 3  # the failed one stays unacked, for redelivery


async def test_a_result_that_cannot_be_stored_is_replaced_by_an_error_and_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = queue_broker()
    backend = broker.result_backend
    store = backend.set_result

    async def picky_set_result(task_id: str, result: Any) -> None:
        if result.return_value == "unstorable":
            raise TypeError("cannot encode 'unstorable'")
        await store(task_id, result)

    backend.set_result = picky_set_result  # type: ignore[method-assign]
    calls = Recorder()

    @batch_task(broker, batch_size=2)
    async def handler(items: list[int]) -> Any:
        calls.record(items)
        return "unstorable"

    async with running_worker(broker):
        sent = [await handler.kiq(i) for i in (1, 2)]
        await broker.wait_acked(2)
    assert calls.batches == [[1, 2]]  # run once, never again
    for task in sent:
        error = (await task.wait_result(timeout=5)).error
        assert type(error).__name__ == "BatchResultError"
        assert "cannot encode" in str(error)


@pytest.mark.parametrize("with_middleware", [False, True])
async def test_each_result_carries_its_own_messages_labels(
    with_middleware: bool,
) -> None:
    from tests.helpers import CountingMiddleware

    broker: AsyncBroker = queue_broker()
    if with_middleware:  # results are then built per message, not shared
        broker = broker.with_middlewares(CountingMiddleware())

    @batch_task(broker, batch_size=6)
    async def handler(items: list[int]) -> int:
        return sum(items)

    async with running_worker(broker):
        sent = [
            await handler.kicker().with_labels(tenant=f"t{i % 3}").kiq(i)
            for i in range(6)
        ]
        for task in sent:
            await task.wait_result(timeout=5)
    for index, task in enumerate(sent):
        result = await task.wait_result(timeout=5)
        assert result.return_value == 15
        assert result.labels["tenant"] == f"t{index % 3}"
