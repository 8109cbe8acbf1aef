"""``OpenTelemetryBatchMetrics`` on InMemoryBroker, read by an InMemoryMetricReader."""

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from taskiq_batching import BatchingMiddleware, batch_task, per_item
from taskiq_batching.metrics import INSTRUMENTS, OpenTelemetryBatchMetrics
from tests.helpers import memory_broker

pytestmark = pytest.mark.timeout(30)


def points(reader: InMemoryMetricReader) -> dict[str, list[object]]:
    """Every data point collected now, by instrument name."""
    found: dict[str, list[object]] = {}
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded or observed yet
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def one(found: dict[str, list[object]], name: str, **attributes: Any) -> object:
    (point,) = [
        p
        for p in found[name]
        if dict(getattr(p, "attributes", None) or {}) == attributes
    ]
    return point


def number(found: dict[str, list[object]], name: str, **attributes: Any) -> float:
    point = one(found, name, **attributes)
    assert isinstance(point, NumberDataPoint)
    return point.value


def histogram(
    found: dict[str, list[object]], name: str, **attributes: Any
) -> HistogramDataPoint:
    point = one(found, name, **attributes)
    assert isinstance(point, HistogramDataPoint)
    return point


async def test_same_instruments_and_attributes_as_prometheus() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    broker = memory_broker().with_middlewares(
        OpenTelemetryBatchMetrics(meter_provider=provider)
    )
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    @batch_task(broker, task_name="rows", batch_size=4, batch_isolate=True)
    async def rows(items: list[int]) -> Any:
        nonlocal calls
        calls += 1
        if 2 in items:
            raise ValueError("no 2")
        if 7 in items:
            started.set()
            await release.wait()
        return per_item(items)

    await broker.startup()
    for item in range(8):
        await rows.kiq(item)
    await asyncio.wait_for(started.wait(), 10)
    for item in range(8, 10):
        await rows.kiq(item)
    await BatchingMiddleware.of(broker).wait_buffered(2, timeout=10)
    # Observed at collection: 2 buffered, the second batch (4) running.
    held = points(reader)
    task = {"task_name": "rows"}
    assert number(held, "taskiq_batching_buffered_messages", **task) == 2
    assert number(held, "taskiq_batching_in_flight_messages", **task) == 4
    assert number(held, "taskiq_batching_running_batches", **task) == 1

    release.set()
    await broker.shutdown()
    found = points(reader)
    assert set(found) == {spec.name for spec in INSTRUMENTS} - {
        "taskiq_batching_reclaimed_messages"
    }
    flushes = "taskiq_batching_flushes"
    assert number(found, flushes, reason="size", **task) == 2
    assert number(found, flushes, reason="shutdown", **task) == 1
    size = histogram(found, "taskiq_batching_batch_size", **task)
    assert (size.count, size.sum) == (3, 10)
    assert 100 in size.explicit_bounds
    fill = histogram(found, "taskiq_batching_batch_fill_ratio", **task)
    assert fill.sum == 2.5
    assert fill.explicit_bounds[-1] == 1.0
    wait = histogram(found, "taskiq_batching_batch_wait_seconds", **task)
    assert wait.count == 3
    run = "taskiq_batching_batch_run_seconds"
    partial = histogram(found, run, outcome="partial", **task)
    success = histogram(found, run, outcome="success", **task)
    assert (partial.count, success.count) == (1, 2)
    assert number(found, "taskiq_batching_failed_messages", **task) == 1
    reruns = number(found, "taskiq_batching_isolation_reruns", **task)
    assert reruns == calls - 3  # three batches, one call each but re-runs
    assert number(found, "taskiq_batching_in_flight_messages", **task) == 0


async def test_reclaimed_has_no_attributes() -> None:
    reader = InMemoryMetricReader()
    metrics = OpenTelemetryBatchMetrics(
        meter_provider=MeterProvider(metric_readers=[reader])
    )
    metrics.reclaimed(3)
    (point,) = points(reader)["taskiq_batching_reclaimed_messages"]
    assert isinstance(point, NumberDataPoint)
    assert (point.value, dict(point.attributes or {})) == (3, {})


def test_gauges_observe_nothing_before_attached() -> None:
    reader = InMemoryMetricReader()
    OpenTelemetryBatchMetrics(meter_provider=MeterProvider(metric_readers=[reader]))
    assert "taskiq_batching_buffered_messages" not in points(reader)
