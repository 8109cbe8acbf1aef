"""The fleet prototypes' figures (bench/fleet_proto_stats.py), without brokers."""

import pytest

from bench.fleet_proto_common import Batch, Config
from bench.fleet_proto_stats import fill, markdown, per_second, summarize


def test_fill_is_mean_batch_over_the_smaller_of_size_and_timeout_gathering() -> None:
    batches = [Batch(1.0, "k0", [0.5] * 100), Batch(2.0, "k0", [1.5] * 20)]
    # 120 messages in 2 batches: mean 60; 300 msg/s x 0.5 s = 150 > 100.
    assert fill(batches, 100, 300.0, 0.5) == pytest.approx(0.6)
    # 40 msg/s x 0.5 s = 20: batches of 60 exceed it.
    assert fill(batches, 100, 40.0, 0.5) == pytest.approx(3.0)
    assert fill([], 100, 300.0, 0.5) == 0.0


def test_per_second_counts_only_the_window() -> None:
    assert per_second([0.5, 1.0, 1.5, 3.0], 1.0, 3.0) == pytest.approx(1.0)
    assert per_second([1.0], 2.0, 2.0) == 0.0


def test_summarize_judges_each_key_by_its_own_share_of_the_rate() -> None:
    cfg = Config("p", batch_size=100, batch_timeout=0.5, keys=2)
    # 200 msg/s over 1 s, 2 keys: 100 msg/s each, ideal per key 50.
    batches = [
        Batch(10.5, "k0", [10.0] * 50, pid=1),
        Batch(10.5, "k1", [10.0] * 25, pid=2),
        Batch(10.6, "k1", [10.2] * 25, pid=2),
    ]
    commands = {1: [10.0, 12.0, 13.0], 2: [12.5]}
    row = summarize(batches, commands, cfg, 100, (10.0, 10.5, 12.0, 14.0), 200.0)
    assert row["sent_rate"] == pytest.approx(200)
    assert row["min_key_fill"] == pytest.approx(0.5)
    assert row["p99_ms"] == pytest.approx(500)
    assert row["late"] == 0
    # Idle window 12..14 s: worker 1 sent 2, worker 2 sent 1: 0.75/s each.
    assert row["idle_cmds"] == pytest.approx(0.75)
    assert row["procs"] == 2
    text = markdown({"rows": [{**row, "mechanism": "m", "workers": 2}]}, head=False)
    assert text.startswith("| m | 2 | 200 |")


def test_a_drain_reports_its_rate_from_the_start_to_the_last_batch() -> None:
    cfg = Config("p")
    batches = [Batch(1.0, "k0", [0.0] * 100), Batch(2.0, "k0", [0.0] * 100)]
    row = summarize(batches, {}, cfg, 200, (0.0, 0.0, 3.0, 4.0), 0.0)
    assert row["drain_rate"] == pytest.approx(100)
