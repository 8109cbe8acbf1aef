"""Issue 18 items 3 and 4 in bench/fleet.py: per-key fill, drain ratio, idle counts."""

from typing import Any

import pytest

from bench.fleet_app import item
from bench.fleet_counts import parse_tcp
from bench.fleet_keys import key_figures, key_fills
from bench.fleet_report_items import (
    drain_pairs,
    drain_ratio,
    idle_notes,
    keys_table,
    rest_table,
)
from bench.fleet_rest import plain_figures


def keyed_batch(size: int, key: int) -> list[list[float]]:
    """The records of one batch of ``size`` messages of ``key``."""
    return [[0.0, float(size), 0.1, 1.0, float(key)] for _ in range(size)]


def test_each_key_is_measured_against_its_own_share_of_the_rate() -> None:
    # Key 0: 3 batches of 20 (60 messages); key 1: 60 messages in 6 batches
    # of 10. 120 messages at 240 msg/s: each key 120 msg/s, ideal over
    # 0.5 s = 60, capped by batch_size 50.
    records = [r for _ in range(3) for r in keyed_batch(20, 0)]
    records += [r for _ in range(6) for r in keyed_batch(10, 1)]
    fills = key_fills(records, 50, 0.5, 240.0)
    assert fills == {0: pytest.approx(20 / 50), 1: pytest.approx(10 / 50)}
    figures = key_figures(records, 50, 0.5, 240.0)
    assert figures["key_fill_worst"] == pytest.approx(0.2)
    assert figures["key_fill_mean"] == pytest.approx(0.3)
    assert figures["keys_seen"] == 2


def test_a_rarer_key_expects_smaller_batches() -> None:
    # Key 0 has 3 of 4 messages: 150 of 200 msg/s, ideal 75; key 1: 50
    # msg/s, ideal 25. Batches of 75 and 25 fill both.
    records = keyed_batch(75, 0) + keyed_batch(25, 1)
    assert key_fills(records, 100, 0.5, 200.0) == {
        0: pytest.approx(1.0),
        1: pytest.approx(1.0),
    }


def test_records_without_a_key_give_no_key_figures() -> None:
    assert key_figures([[0.0, 5.0, 0.1, 1.0]] * 5, 100, 0.5, 10.0) == {}
    assert key_figures([[0.0, 5.0, 0.1, 1.0, -1.0]] * 5, 100, 0.5, 10.0) == {}


def test_items_carry_their_key_round_robin_only_when_keyed() -> None:
    assert item(12.5, 7, 0) == 12.5
    assert item(12.5, 7, 3) == [12.5, 1.0]


def test_proc_net_tcp_gives_local_and_remote_ports_and_inodes() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
        "retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:C1F2 0100007F:18EB 01 00000000:00000000 00:00000000 "
        "00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n"
        "   1: 00000000000000000000000001000000:1538 "
        "00000000000000000000000000000000:0000 0A 00000000:00000000 "
        "00:00000000 00000000  1000        0 77 1 0000000000000000 100 0 0 10 0\n"
    )
    assert parse_tcp(table) == [(0xC1F2, 6379, 4242), (5432, 0, 77)]


def row(path: str, workers: int, **figures: Any) -> dict[str, Any]:
    return {
        "broker": "stream",
        "workers": workers,
        "path": path,
        "rate": 0.0,
        **figures,
    }


def test_the_drain_ratio_is_wait_over_today_in_the_same_run() -> None:
    today = row("today", 2, drain=20000, messages=20000, sent_rate=8000.0)
    wait = row("wait", 2, drain=20000, messages=20000, sent_rate=7600.0)
    assert drain_ratio(today, wait) == pytest.approx(0.95)
    assert drain_ratio(today, row("wait", 2, drain=20000, messages=0)) is None
    lines = rest_table(
        [
            {**today, "idle_cmds": 0.5, "idle_cpu": 0.004, **plain_figures([4.0, 6.0])},
            {**wait, "idle_cmds": None},
        ]
    )
    assert lines[2] == (
        "| stream | 2 | 8,000 | 7,600 | 0.95x | 0.50 | not measured | 0.4 | — "
        "| 4 / 6 | — |"
    )


def test_repeated_drains_give_the_median_of_their_pairs_ratios() -> None:
    rows = []
    for round_, (today, wait) in enumerate(
        [(100.0, 90.0), (100.0, 50.0), (80.0, 96.0)]
    ):
        for path, rate in (("today", today), ("wait", wait)):
            rows.append(
                {**row(path, 2, drain=9, messages=9, sent_rate=rate), "round": round_}
            )
    # Pairs 0.90, 0.50 and 1.20: the median, then the range.
    assert drain_pairs(rows) == [
        "- drain wait / today, stream N = 2: median 0.90x over 3 pair(s) (0.50-1.20)"
    ]
    assert len(rest_table(rows)) == 2 + 3  # one line per round
    assert drain_pairs(rows[:2]) == []  # one pair: its ratio is in the table


def test_plain_figures_are_nearest_rank_percentiles_of_the_waits() -> None:
    figures = plain_figures([float(ms) for ms in range(1, 101)])
    assert figures == {
        "plain_n": 100.0,
        "plain_p50_ms": 50.0,
        "plain_p99_ms": 99.0,
        "plain_max_ms": 100.0,
    }
    assert plain_figures([]) == {}


def test_keys_and_idle_commands_are_reported_per_path() -> None:
    today = row("today", 8, fill=0.1, key_fill_worst=0.15, key_fill_mean=0.2)
    wait = row("wait", 8, fill=0.5, key_fill_worst=0.9, key_fill_mean=0.95)
    wait["keys_seen"] = 10.0
    lines = keys_table([{**today, "rate": 2000.0}, {**wait, "rate": 2000.0}])
    assert lines[2] == (
        "| stream | 2,000 | 8 | 10 | 0.10 | 0.50 | 0.15 | 0.90 | 0.20 | 0.95 |"
    )
    assert keys_table([today])
    assert not keys_table([row("today", 8)])
    notes = idle_notes([{**wait, "idle_names": {"xread": 5, "evalsha": 9}}], "10")
    assert notes == [
        "- idle stream N = 8 wait: EVALSHA 9, XREAD 5 (the fleet's, in 10 s)"
    ]
