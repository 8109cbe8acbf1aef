"""``PrometheusBatchMetrics`` on InMemoryBroker, with a registry of its own."""

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from taskiq import InMemoryBroker

from taskiq_batching import (
    BatchingMiddleware,
    MiddlewareMissingError,
    batch_task,
    per_item,
)
from taskiq_batching.metrics import PrometheusBatchMetrics
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


def metered(**kwargs: Any) -> tuple[InMemoryBroker, PrometheusBatchMetrics]:
    metrics = PrometheusBatchMetrics(registry=CollectorRegistry(), **kwargs)
    broker = memory_broker()
    broker.add_middlewares(metrics)
    return broker, metrics


def value(metrics: PrometheusBatchMetrics, name: str, **labels: str) -> float:
    assert metrics.registry is not None
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_flushes_sizes_fill_wait_and_run_per_batch() -> None:
    broker, metrics = metered()

    seen: list[int] = []
    two_full = asyncio.Event()

    @batch_task(broker, task_name="rows", batch_size=10)
    async def rows(items: list[int]) -> int:
        seen.extend(items)
        if len(seen) == 20:
            two_full.set()
        return len(items)

    await broker.startup()
    for item in range(25):
        await rows.kiq(item)
    await asyncio.wait_for(two_full.wait(), 10)
    await BatchingMiddleware.of(broker).wait_buffered(5, timeout=10)
    await broker.shutdown()  # flushes the last 5 (reason "shutdown"), waits

    task = {"task_name": "rows"}
    assert value(metrics, "taskiq_batching_flushes_total", reason="size", **task) == 2
    assert value(metrics, "taskiq_batching_flushes_total", reason="shutdown", **task)
    assert value(metrics, "taskiq_batching_batch_size_sum", **task) == 25
    assert value(metrics, "taskiq_batching_batch_size_count", **task) == 3
    assert value(metrics, "taskiq_batching_batch_size_bucket", le="5.0", **task) == 1
    assert value(metrics, "taskiq_batching_batch_fill_ratio_sum", **task) == 2.5
    assert value(metrics, "taskiq_batching_batch_fill_ratio_bucket", le="0.95", **task)
    assert (
        value(metrics, "taskiq_batching_batch_fill_ratio_bucket", le="0.5", **task) == 1
    )
    assert value(metrics, "taskiq_batching_batch_wait_seconds_count", **task) == 3
    run = "taskiq_batching_batch_run_seconds_count"
    assert value(metrics, run, outcome="success", **task) == 3
    assert value(metrics, "taskiq_batching_failed_messages_total", **task) == 0
    assert value(metrics, "taskiq_batching_isolation_reruns_total", **task) == 0


async def test_failed_messages_outcomes_and_isolation_reruns() -> None:
    broker, metrics = metered()
    calls = 0

    @batch_task(broker, task_name="isolated", batch_size=8, batch_isolate=True)
    async def isolated(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        if 3 in items:
            raise ValueError("no 3")

    @batch_task(broker, task_name="some", batch_size=4)
    async def some(items: list[int]) -> Any:
        return per_item(ValueError("odd") if i % 2 else i for i in items)

    @batch_task(broker, task_name="broken", batch_size=2)
    async def broken(items: list[int]) -> None:
        raise RuntimeError("down")

    await broker.startup()
    for item in range(8):
        await isolated.kiq(item)
    for item in range(4):
        await some.kiq(item)
    for item in range(2):
        await broken.kiq(item)
    await broker.wait_all()
    await broker.shutdown()

    failed = "taskiq_batching_failed_messages_total"
    reruns = "taskiq_batching_isolation_reruns_total"
    run = "taskiq_batching_batch_run_seconds_count"
    assert calls > 1
    assert value(metrics, failed, task_name="isolated") == 1
    assert value(metrics, reruns, task_name="isolated") == calls - 1
    assert value(metrics, run, task_name="isolated", outcome="partial") == 1
    assert value(metrics, failed, task_name="some") == 2
    assert value(metrics, reruns, task_name="some") == 0
    assert value(metrics, run, task_name="some", outcome="partial") == 1
    assert value(metrics, failed, task_name="broken") == 2
    assert value(metrics, run, task_name="broken", outcome="error") == 1


async def test_gauges_follow_buffered_and_in_flight_messages() -> None:
    broker, metrics = metered()
    started = asyncio.Event()
    release = asyncio.Event()

    @batch_task(broker, task_name="slow", batch_size=10)
    async def slow(items: list[int]) -> None:
        started.set()
        await release.wait()

    await broker.startup()
    for item in range(3):
        await slow.kiq(item)
    await BatchingMiddleware.of(broker).wait_buffered(3, timeout=10)
    metrics.refresh()
    task = {"task_name": "slow"}
    assert value(metrics, "taskiq_batching_buffered_messages", **task) == 3
    assert value(metrics, "taskiq_batching_in_flight_messages", **task) == 0

    for item in range(3, 10):
        await slow.kiq(item)
    await asyncio.wait_for(started.wait(), 10)
    # Set at the flush itself, with no refresh in between.
    assert value(metrics, "taskiq_batching_buffered_messages", **task) == 0
    assert value(metrics, "taskiq_batching_in_flight_messages", **task) == 10
    metrics.refresh()
    assert value(metrics, "taskiq_batching_running_batches", **task) == 1

    release.set()
    await broker.wait_all()
    metrics.refresh()
    assert value(metrics, "taskiq_batching_in_flight_messages", **task) == 0
    assert value(metrics, "taskiq_batching_running_batches", **task) == 0
    await broker.shutdown()


async def test_gauges_refreshed_on_a_timer_in_a_worker_process() -> None:
    broker, metrics = metered(interval=0.01)

    @batch_task(broker, task_name="waits", batch_size=100)
    async def waits(items: list[int]) -> None:
        pass

    broker.is_worker_process = True
    # Only this middleware's startup: the broker's would install signal handlers.
    await metrics.startup()
    try:
        for item in range(4):
            await waits.kiq(item)
        # No event tells the gauge of these 4 (no flush yet): the timer does.
        deadline = time.monotonic() + 10
        gauge = "taskiq_batching_buffered_messages"
        while value(metrics, gauge, task_name="waits") != 4:
            assert time.monotonic() < deadline, "gauge not refreshed within 10 s"
            await asyncio.sleep(0.01)
    finally:
        await metrics.shutdown()
        broker.is_worker_process = False
    assert metrics._refresher is None
    await broker.shutdown()
    assert value(metrics, "taskiq_batching_batch_size_sum", task_name="waits") == 4


def test_reclaimed_messages_have_no_task_label() -> None:
    metrics = PrometheusBatchMetrics(registry=CollectorRegistry())
    metrics.reclaimed(3)
    metrics.reclaimed(2)
    assert value(metrics, "taskiq_batching_reclaimed_messages_total") == 5


async def test_added_before_batching_middleware_attaches_at_startup() -> None:
    metrics = PrometheusBatchMetrics(registry=CollectorRegistry())
    broker = InMemoryBroker(max_stored_results=-1).with_middlewares(
        metrics, BatchingMiddleware()
    )

    @batch_task(broker, task_name="later", batch_size=2)
    async def later(items: list[int]) -> None:
        pass

    await broker.startup()
    for item in range(2):
        await later.kiq(item)
    await broker.wait_all()
    await broker.shutdown()
    assert value(metrics, "taskiq_batching_batch_size_sum", task_name="later") == 2


async def test_a_broker_without_batching_middleware_fails_at_startup() -> None:
    broker = InMemoryBroker().with_middlewares(
        PrometheusBatchMetrics(registry=CollectorRegistry())
    )
    with pytest.raises(MiddlewareMissingError):
        await broker.startup()


async def test_exporters_of_one_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    first = PrometheusBatchMetrics(registry=registry)
    second = PrometheusBatchMetrics(registry=registry)
    brokers = [memory_broker().with_middlewares(m) for m in (first, second)]
    for index, broker in enumerate(brokers):

        @batch_task(broker, task_name="shared", batch_size=1)
        async def shared(items: list[int]) -> None:
            pass

        await broker.startup()
        for item in range(index + 1):
            await shared.kiq(item)
        await broker.wait_all()
        await broker.shutdown()
    assert value(first, "taskiq_batching_batch_size_sum", task_name="shared") == 3


async def test_given_also_as_an_observer_it_counts_each_batch_once() -> None:
    metrics = PrometheusBatchMetrics(registry=CollectorRegistry())
    broker = InMemoryBroker(max_stored_results=-1).with_middlewares(
        BatchingMiddleware(observers=[metrics]), metrics
    )

    @batch_task(broker, task_name="once", batch_size=2)
    async def once(items: list[int]) -> None:
        pass

    await broker.startup()
    for item in range(2):
        await once.kiq(item)
    await broker.wait_all()
    await broker.shutdown()
    assert value(metrics, "taskiq_batching_batch_size_count", task_name="once") == 1


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        PrometheusBatchMetrics(interval=0)
