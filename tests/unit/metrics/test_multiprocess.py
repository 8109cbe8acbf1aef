"""The exporter in processes set up by taskiq's ``PrometheusMiddleware``.

Each case runs in a process of its own (``mp_app.py``): what
prometheus_client does depends on when it is first imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[3]


def run(mode: str, path: Path) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.metrics.mp_app", mode, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def collected(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What taskiq's endpoint would serve from the directory."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_prometheus_client_is_not_imported_until_needed(tmp_path: Path) -> None:
    found, _ = run("lazy", tmp_path)
    assert found["imported"] is False


def test_metrics_go_to_the_multiprocess_directory(tmp_path: Path) -> None:
    first, _ = run("batch", tmp_path)
    values = collected(tmp_path)
    task = (("task_name", "mp"),)
    assert values[("taskiq_batching_batch_size_sum", task)] == 3
    flushes = ("taskiq_batching_flushes_total", (("reason", "size"), *task))
    assert values[flushes] == 1
    assert values[("taskiq_batching_buffered_messages", task)] == 0
    assert (tmp_path / f"gauge_livesum_{first['pid']}.db").exists()

    # A later process (a restarted worker) forgets the dead one's live
    # gauges, and the counters add up over both.
    second, _ = run("batch", tmp_path)
    assert not (tmp_path / f"gauge_livesum_{first['pid']}.db").exists()
    assert (tmp_path / f"gauge_livesum_{second['pid']}.db").exists()
    assert collected(tmp_path)[("taskiq_batching_batch_size_sum", task)] == 6


def test_imported_before_the_directory_is_set_warns(tmp_path: Path) -> None:
    _, stderr = run("early", tmp_path)
    assert "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR" in stderr
    assert not any(tmp_path.glob("histogram_*.db"))
