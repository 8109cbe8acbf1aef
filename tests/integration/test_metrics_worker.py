"""Batch metrics and spans from a real ``taskiq worker`` on the real Redis.

Prometheus: ``--workers 2`` with taskiq's ``PrometheusMiddleware``; the
endpoint it serves (over HTTP, merged from both processes' files) must
add up to the messages sent. OpenTelemetry: the worker keeps spans and
metrics in memory and writes them out when it stops.
"""

import asyncio
import json
import socket
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from taskiq_batching.metrics import INSTRUMENTS
from tests.integration.metrics_app import FAILING, make_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

APP = "tests.integration.metrics_app:broker"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample the endpoint serves, by sample name."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), sample.value))
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a sample over the label values not given."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


async def send(producer: AsyncBroker, count: int) -> list[Any]:
    rows: AsyncKicker[Any, Any] = AsyncKicker("rows", producer, {})
    sent = [await rows.kiq(item) for item in range(count)]
    return [await task.wait_result(timeout=90, check_interval=0.05) for task in sent]


@pytest.fixture
def start(redis_url: str, queue: str, tmp_path: Path) -> Any:
    workers: list[Worker] = []

    def run(env: dict[str, str], workers_count: int) -> Worker:
        worker = Worker(
            {"REDIS_URL": redis_url, "TB_QUEUE": queue, **env},
            tmp_path / f"worker-{len(workers)}.log",
            app=APP,
            args=("--workers", str(workers_count)),
        )
        workers.append(worker)
        return worker

    yield run
    for worker in workers:
        worker.kill()


async def test_prometheus_endpoint_of_two_workers_adds_up(
    redis_url: str,
    redis: Redis,
    queue: str,
    tmp_path: Path,
    start: Callable[[dict[str, str], int], Worker],
) -> None:
    sent = 600
    port = free_port()
    producer = make_broker(redis_url, queue)
    await producer.startup()  # creates the stream's consumer group first
    worker = start(
        {
            "TB_METRICS": "prometheus",
            "TB_PROM_DIR": str(tmp_path / "prom"),
            "TB_PROM_PORT": str(port),
            "TB_BATCH_SIZE": "50",
            "TB_BATCH_TIMEOUT": "1",
        },
        2,
    )
    results = await send(producer, sent)
    failing = [i for i in range(sent) if i % 100 == FAILING]
    assert [i for i, r in enumerate(results) if r.is_err] == failing, worker.output()

    samples: Samples = {}

    async def drained() -> bool:
        # Every batch has been recorded once its results are stored; the
        # gauges come back to 0 at the next refresh (0.1 s).
        nonlocal samples
        try:
            samples = await asyncio.to_thread(scrape, port)
        except OSError:
            return False
        held = total(samples, "taskiq_batching_buffered_messages") + total(
            samples, "taskiq_batching_in_flight_messages"
        )
        return total(samples, "taskiq_batching_batch_size_sum") == sent and held == 0

    await eventually(drained, 30, f"the endpoint adds up\n{worker.output()}")
    rows = {"task_name": "rows"}
    batches = total(samples, "taskiq_batching_batch_size_count", **rows)
    assert total(samples, "taskiq_batching_flushes_total", **rows) == batches
    assert total(samples, "taskiq_batching_batch_size_sum", **rows) == sent
    assert total(samples, "taskiq_batching_batch_fill_ratio_count", **rows) == batches
    fill_sum = total(samples, "taskiq_batching_batch_fill_ratio_sum", **rows)
    assert fill_sum == pytest.approx(sent / 50)
    assert total(samples, "taskiq_batching_batch_wait_seconds_count", **rows) == batches
    assert total(samples, "taskiq_batching_batch_run_seconds_count", **rows) == batches
    partial = total(
        samples, "taskiq_batching_batch_run_seconds_count", outcome="partial", **rows
    )
    assert 1 <= partial <= len(failing)
    failed = total(samples, "taskiq_batching_failed_messages_total", **rows)
    assert failed == len(failing)
    assert total(samples, "taskiq_batching_isolation_reruns_total", **rows) > 0
    assert total(samples, "taskiq_batching_reclaimed_messages_total") == 0
    assert {labels["reason"] for labels, _ in samples["taskiq_batching_flushes_total"]}
    # Labels: the task name (and reason, outcome, le), never an item.
    for name, found in samples.items():
        if name.startswith("taskiq_batching_"):
            for labels, _ in found:
                assert labels.keys() <= {"task_name", "reason", "outcome", "le"}, name
    # taskiq's own metrics are served by the same endpoint, per message.
    assert total(samples, "received_tasks_total", **rows) == sent

    assert worker.stop(timeout=20) < 20
    assert worker.process.returncode == 0, worker.output()
    await producer.shutdown()


async def test_opentelemetry_spans_and_metrics_of_a_worker(
    redis_url: str,
    redis: Redis,
    queue: str,
    tmp_path: Path,
    start: Callable[[dict[str, str], int], Worker],
) -> None:
    sent = 250
    out = tmp_path / "otel"
    out.mkdir()
    producer = make_broker(redis_url, queue)
    await producer.startup()
    worker = start(
        {
            "TB_METRICS": "otel",
            "TB_OTEL_OUT": str(out),
            "TB_BATCH_SIZE": "100",
            "TB_BATCH_TIMEOUT": "0.5",
        },
        1,
    )
    results = await send(producer, sent)
    assert sum(r.is_err for r in results) == 3, worker.output()
    assert worker.stop(timeout=20) < 20
    assert worker.process.returncode == 0, worker.output()
    await producer.shutdown()

    (dump,) = out.glob("*.json")
    found = json.loads(dump.read_text())
    spans = found["spans"]
    messages = [s for s in spans if s["name"] == "execute/rows"]
    batches = [s for s in spans if s["name"] == "execute_batch/rows"]
    assert len(messages) == sent
    assert (
        sum(b["attributes"]["messaging.batch.message_count"] for b in batches) == sent
    )
    message_ids = {s["context"]["span_id"] for s in messages}
    linked: set[str] = set()
    for batch in batches:
        attributes = batch["attributes"]
        links = {link["context"]["span_id"] for link in batch["links"]}
        assert len(links) == attributes["messaging.batch.message_count"]
        linked |= links
        assert batch["parent_id"] is None  # a root span, its messages linked
        assert attributes["taskiq.task_name"] == "rows"
        assert attributes["taskiq.action"] == "execute_batch"
        assert attributes["taskiq_batching.flush_reason"] in {"size", "timeout"}
        assert 0 <= attributes["taskiq_batching.waited_seconds"] < 60
        assert attributes["taskiq_batching.calls"] >= 1
    assert linked == message_ids
    assert sum(b["attributes"]["taskiq_batching.failed_count"] for b in batches) == 3
    assert any(b["attributes"]["taskiq_batching.calls"] > 1 for b in batches)

    points = metric_points(found["metrics"])
    assert set(points) == {spec.name for spec in INSTRUMENTS} - {
        "taskiq_batching_reclaimed_messages"
    }
    (size,) = points["taskiq_batching_batch_size"]
    assert size["attributes"] == {"task_name": "rows"}
    assert (size["sum"], size["count"]) == (sent, len(batches))
    flushes = sum(p["value"] for p in points["taskiq_batching_flushes"])
    assert flushes == len(batches)
    (failed,) = points["taskiq_batching_failed_messages"]
    assert failed["value"] == 3
    assert all(p["value"] == 0 for p in points["taskiq_batching_buffered_messages"])


def metric_points(metrics: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Data points by instrument name, from a ``MetricsData.to_json()``."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resource in metrics["resource_metrics"]:
        for scope in resource["scope_metrics"]:
            if scope["scope"]["name"] != "taskiq_batching":
                continue  # taskiq's own instruments
            for metric in scope["metrics"]:
                found[metric["name"]].extend(metric["data"]["data_points"])
    return found
