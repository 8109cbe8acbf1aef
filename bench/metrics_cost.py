"""``python -m bench.metrics_cost``: CPU time the batch metrics take per batch.

A drain comparison (``--only batched-stream-batchmetrics``) measures the
whole worker, with the noise of a shared machine; this measures only what
the exporters do per batch (one flush, with two gauges changed, and one
finished batch, as the batcher reports them), in a loop: the best of
several repeats, in microseconds. Prometheus in multiprocess mode
(values in files, as under taskiq's ``PrometheusMiddleware``);
OpenTelemetry with the SDK's meter provider and an in-memory reader.
"""

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable

from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, BatchReport, FlushReason, batch_task
from taskiq_batching.metrics.base import BatchMetricsMiddleware

REPORT = BatchReport("work", 100, 100, FlushReason.SIZE, 0.05, 0.002, 0, 1)


def exporter(kind: str) -> BatchMetricsMiddleware:
    if kind == "prometheus":
        from taskiq_batching.metrics import PrometheusBatchMetrics

        return PrometheusBatchMetrics()
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from taskiq_batching.metrics import OpenTelemetryBatchMetrics

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return OpenTelemetryBatchMetrics(meter_provider=provider)


def per_batch(metrics: BatchMetricsMiddleware, batches: int, repeats: int) -> float:
    """Best-of-``repeats`` microseconds for one flush and one finished batch.

    The batcher's counts alternate, as in a drain, so that the flush sets
    the buffered and in-flight gauges each time.
    """
    batcher = metrics.batcher
    assert batcher is not None
    turn = [0]

    def once() -> None:
        turn[0] ^= 1
        batcher.held["work"] = 100 + turn[0] * 50
        batcher.waiting["work"] = turn[0] * 50
        metrics.flushed("work", FlushReason.SIZE, 100)
        metrics.finished(REPORT)

    try:
        return _best(once, batches, repeats)
    finally:
        batcher.held["work"] = batcher.waiting["work"] = 0


def _best(call: Callable[[], None], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - began) / count)
    return best * 1e6


async def measure(kind: str, batches: int, repeats: int) -> float:
    metrics = exporter(kind)
    broker = InMemoryBroker().with_middlewares(BatchingMiddleware(), metrics)

    @batch_task(broker, task_name="work", batch_size=100)
    async def work(items: list[int]) -> None:
        pass

    await broker.startup()  # attaches; the gauges read the batcher per flush
    try:
        return per_batch(metrics, batches, repeats)
    finally:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost")
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # Before prometheus_client is imported: values go to files.
    with tempfile.TemporaryDirectory(prefix="tbbench-prom-") as path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        for kind in ("prometheus", "opentelemetry"):
            cost = asyncio.run(measure(kind, args.batches, args.repeats))
            print(
                f"{kind}: {cost:.1f} µs per batch "
                f"({cost / 100 * 1000:.0f} ns per message at batch_size 100)"
            )


if __name__ == "__main__":
    main()
