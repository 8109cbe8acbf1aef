"""Batched tasks under taskiq's own Receiver, as ``taskiq worker`` runs it."""

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from taskiq import (
    AckableMessage,
    SimpleRetryMiddleware,
    SmartRetryMiddleware,
    TaskiqDepends,
    TaskiqMessage,
    TaskiqMiddleware,
)
from taskiq.acks import AcknowledgeType
from taskiq.kicker import AsyncKicker

from taskiq_batching import BatchInfo, BatchingMiddleware, BatchItemError, batch_task
from tests.helpers import (
    CountingMiddleware,
    PrefetchQueueBroker,
    QueueBroker,
    Recorder,
    push_raw,
    queue_broker,
    running_worker,
)

pytestmark = pytest.mark.timeout(30)


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


async def test_several_batched_tasks_each_progress() -> None:
    broker = queue_broker()
    first, second = Recorder(), Recorder()

    @batch_task(broker, batch_size=30)
    async def task_a(items: list[int]) -> None:
        first.record(items)

    @batch_task(broker, batch_size=30)
    async def task_b(items: list[int]) -> None:
        second.record(items)

    async with running_worker(broker, max_async_tasks=4):
        for i in range(60):
            await task_a.kiq(i)
            await task_b.kiq(i)
        await broker.wait_acked(120)
    assert first.sizes == [30, 30]
    assert second.sizes == [30, 30]


async def test_keyed_buffers_under_pressure_flush_instead_of_wedging() -> None:
    broker = queue_broker()
    seen = Recorder()

    # Size-only, and every message has its own tenant: no buffer ever
    # fills, so only the in-flight limit (2 * batch_size) can flush them.
    @batch_task(broker, batch_size=3)
    async def handler(
        items: list[int], tenant: int, info: BatchInfo = TaskiqDepends()
    ) -> None:
        seen.record(items, info)

    async with running_worker(broker):
        for i in range(12):
            await handler.kiq(i, tenant=i)
        await broker.wait_acked(6)
        assert set(seen.reasons) == {"pressure"}
    assert sum(seen.sizes) == 12


@pytest.mark.parametrize(
    ("worker_ack", "label", "acked_inside_batch"),
    [
        (AcknowledgeType.WHEN_SAVED, None, False),
        (AcknowledgeType.WHEN_EXECUTED, None, False),
        (AcknowledgeType.WHEN_RECEIVED, None, True),
        (AcknowledgeType.WHEN_SAVED, "when_received", True),
        (AcknowledgeType.WHEN_RECEIVED, "when_saved", False),
    ],
)
async def test_each_message_is_acked_per_its_ack_type(
    worker_ack: AcknowledgeType,
    label: str | None,
    acked_inside_batch: bool,
) -> None:
    broker = queue_broker()
    acked_during: list[list[str]] = []
    labels: dict[str, Any] = {} if label is None else {"ack_type": label}

    @batch_task(broker, batch_size=4, **labels)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        acked_during.append([t for t in info.task_ids if t in broker.acked])
        return len(items)

    async with running_worker(broker, ack_type=worker_ack):
        sent = [await handler.kiq(i) for i in range(4)]
        await broker.wait_acked(4)
    ids = [task.task_id for task in sent]
    assert acked_during == [ids if acked_inside_batch else []]
    assert sorted(broker.acked) == sorted(ids)
    for task in sent:
        assert (await task.wait_result(timeout=1)).return_value == 4


async def test_manual_ack_through_batch_info() -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=3, ack_type="manual")
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        assert broker.acked == []
        await info.ack()

    async with running_worker(broker):
        sent = [await handler.kiq(i) for i in range(3)]
        await broker.wait_acked(3)
    assert sorted(broker.acked) == sorted(t.task_id for t in sent)


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


@pytest.mark.parametrize(
    "retry",
    [
        SimpleRetryMiddleware(default_retry_count=3),
        SmartRetryMiddleware(default_retry_count=3, default_delay=0),
    ],
    ids=["simple", "smart"],
)
async def test_failed_batch_is_retried_and_batched_again(retry: Any) -> None:
    broker = queue_broker().with_middlewares(retry)
    seen = Recorder()

    @batch_task(broker, batch_size=5, batch_timeout=0.2, retry_on_error=True)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        if len(seen.batches) == 1:
            raise ConnectionError("database went away")
        return sum(items)

    async with running_worker(broker):
        sent = [await handler.kiq(i) for i in range(5)]
        await broker.wait_acked(10)  # 5 failed attempts + 5 retries
    assert seen.batches == [list(range(5)), list(range(5))]
    for task in sent:
        result = await task.wait_result(timeout=1)
        assert not result.is_err
        assert result.return_value == 10


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
    assert handler.task_name in caplog.text
    assert all(f"garbage-{i}" in broker.acked for i in range(10))


@pytest.mark.parametrize("batch_timeout", [None, 3600])
async def test_a_prefetch_below_batch_size_cannot_wedge_the_worker(
    batch_timeout: float | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = PrefetchQueueBroker(qos=10).with_middlewares(BatchingMiddleware())
    seen = Recorder()

    @batch_task(broker, batch_size=100, batch_timeout=batch_timeout)
    async def handler(items: list[int], info: BatchInfo = TaskiqDepends()) -> None:
        seen.record(items, info)

    async with running_worker(broker):
        for i in range(30):
            await handler.kiq(i)
        await broker.wait_acked(30)
    assert seen.sizes == [10, 10, 10]
    assert set(seen.reasons) == {"pressure"}
    assert "batch_size=100 but the broker delivers at most 10" in caplog.text


async def test_middlewares_run_once_per_message_on_the_worker() -> None:
    counting = CountingMiddleware()
    broker = queue_broker().with_middlewares(counting)
    fail = {"now": False}

    @batch_task(broker, batch_size=4)
    async def handler(items: list[int]) -> int:
        if fail["now"]:
            raise ValueError("bad batch")
        return len(items)

    async with running_worker(broker):
        ok = [(await handler.kiq(i)).task_id for i in range(4)]
        await broker.wait_acked(4)
        fail["now"] = True
        bad = [(await handler.kiq(i)).task_id for i in range(4)]
        await broker.wait_acked(8)
    counting.assert_once_per_message(ok, bad)


async def test_a_failing_pre_execute_middleware_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
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
    assert "cannot accept message" in caplog.text
    assert len(broker.acked) == 3  # the failed one stays unacked, for redelivery


async def test_a_failed_listener_is_started_again_and_buffers_survive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FlakyBroker(QueueBroker):
        """Its first listener dies after three deliveries, as on a lost connection."""

        listens = 0

        async def listen(self) -> AsyncGenerator[bytes | AckableMessage, None]:
            self.listens += 1
            delivered = 0
            async for delivery in super().listen():
                if self.listens == 1 and delivered == 3:
                    raise ConnectionError("connection reset by peer")
                delivered += 1
                yield delivery

    broker = FlakyBroker().with_middlewares(BatchingMiddleware())
    seen = Recorder()

    # Five: the sixth message, read by the dead listener, is lost with it
    # (a broker with acks would deliver it again).
    @batch_task(broker, batch_size=5)
    async def handler(items: list[int]) -> None:
        seen.record(items)

    async with running_worker(broker):
        for item in range(6):
            await handler.kiq(item)
        await broker.wait_acked(5)
    assert broker.listens == 2
    assert "starting it again" in caplog.text
    assert seen.batches == [[0, 1, 2, 4, 5]]


async def test_a_result_that_cannot_be_stored_leaves_its_message_unacked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = queue_broker()
    backend = broker.result_backend
    refused = "refused-task-id"
    store = backend.set_result

    async def flaky_set_result(task_id: str, result: Any) -> None:
        if task_id == refused:
            raise ConnectionError("result store unreachable")
        await store(task_id, result)

    backend.set_result = flaky_set_result  # type: ignore[method-assign]

    @batch_task(broker, batch_size=4)
    async def handler(items: list[int]) -> int:
        return len(items)

    async with running_worker(broker):
        sent = [
            await handler.kiq(0),
            await handler.kicker().with_task_id(refused).kiq(1),
            await handler.kiq(2),
            await handler.kiq(3),
        ]
        await broker.wait_acked(3)
    assert sorted(broker.acked) == sorted(
        t.task_id for t in sent if t.task_id != refused
    )
    assert f"cannot store the result of {refused}" in caplog.text


@pytest.mark.parametrize("with_middleware", [False, True])
async def test_each_result_carries_its_own_messages_labels(
    with_middleware: bool,
) -> None:
    broker = queue_broker()
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
        await broker.wait_acked(6)
    for index, task in enumerate(sent):
        result = await task.wait_result(timeout=5)
        assert result.return_value == 15
        assert result.labels["tenant"] == f"t{index % 3}"
