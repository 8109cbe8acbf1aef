"""The app of ``test_metrics_worker.py``: a real ``taskiq worker`` with metrics.

Configured by environment variables: ``REDIS_URL``, ``TB_QUEUE``,
``TB_BATCH_SIZE``, ``TB_BATCH_TIMEOUT``, and ``TB_METRICS``:

* ``prometheus``: taskiq's ``PrometheusMiddleware`` (multiprocess directory
  ``TB_PROM_DIR``, endpoint on 127.0.0.1:``TB_PROM_PORT``) and
  ``PrometheusBatchMetrics``;
* ``otel``: taskiq's ``OpenTelemetryMiddleware`` and
  ``OpenTelemetryBatchMetrics`` on in-memory exporters; each worker process
  writes what they hold to ``TB_OTEL_OUT/<pid>.json`` when it stops;
* unset: neither (what the test's producer imports).

The task ``rows`` fails every item ``i % 100 == 7``: it raises for the
whole batch, and ``batch_isolate`` re-runs halves to fail only that item.
"""

import json
import os
from pathlib import Path
from typing import Any

from taskiq import AsyncBroker, TaskiqEvents, TaskiqState
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware

FAILING = 7


def make_broker(url: str, queue: str) -> AsyncBroker:
    """The broker of the worker and of the test's producer, without metrics."""
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, prefix_str=queue, result_ex_time=600
    )
    return (
        RedisStreamBroker(url, queue_name=queue, xread_block=500)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )


def with_prometheus(broker: AsyncBroker) -> None:
    """taskiq's Prometheus endpoint, with the batch metrics."""
    from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

    from taskiq_batching.metrics import PrometheusBatchMetrics

    broker.add_middlewares(
        PrometheusMiddleware(
            metrics_path=Path(os.environ["TB_PROM_DIR"]),
            server_port=int(os.environ["TB_PROM_PORT"]),
            server_addr="127.0.0.1",
        ),
        PrometheusBatchMetrics(interval=0.1),
    )


def with_opentelemetry(broker: AsyncBroker) -> None:
    """taskiq's OpenTelemetry middleware and the batch metrics, kept in memory."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

    from taskiq_batching.metrics import OpenTelemetryBatchMetrics

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    broker.add_middlewares(
        OpenTelemetryMiddleware(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
        OpenTelemetryBatchMetrics(meter_provider=meter_provider),
    )

    def dump(state: TaskiqState) -> None:
        # Batches have been drained when the worker's broker shuts down.
        data = reader.get_metrics_data()
        found = {
            "spans": [
                json.loads(span.to_json()) for span in spans.get_finished_spans()
            ],
            "metrics": None if data is None else json.loads(data.to_json()),
        }
        out = Path(os.environ["TB_OTEL_OUT"]) / f"{os.getpid()}.json"
        out.write_text(json.dumps(found))

    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, dump)


URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
broker = make_broker(URL, os.environ.get("TB_QUEUE", "taskiq-batching-metrics-it"))
if os.environ.get("TB_METRICS") == "prometheus":
    with_prometheus(broker)
elif os.environ.get("TB_METRICS") == "otel":
    with_opentelemetry(broker)


@broker.task(
    task_name="rows",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "50")),
    batch_timeout=float(os.environ.get("TB_BATCH_TIMEOUT", "1")),
    batch_isolate=True,
)
async def rows(items: list[int]) -> int:
    """Fail the whole call when an item ends in 07; else return the batch size."""
    if any(item % 100 == FAILING for item in items):
        raise ValueError("an item ending in 07")
    return len(items)
