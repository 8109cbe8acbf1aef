"""Both paths drained at once (bench/fleet_together.py): the window and its rates."""

import pytest

from bench.fleet_together import markdown, order, parse, round_line, window_rates


def test_each_rate_counts_only_what_started_while_both_paths_drained() -> None:
    # Today drains from 10.0 to 14.0, the wait path from 11.0 to 13.0: the
    # window is 11.0-13.0. Today started 3 messages in it (11.0, 12.0,
    # 12.5), the wait path 2 (11.0, 12.0); its last one, at 13.0, ends
    # the window and is not in it.
    starts = {
        "today": [10.0, 10.5, 11.0, 12.0, 12.5, 13.5, 14.0],
        "wait": [11.0, 12.0, 13.0],
    }
    figures = window_rates(starts)
    assert figures["window_s"] == pytest.approx(2.0)
    assert figures["today"]["rate"] == pytest.approx(1.5)
    assert figures["wait"]["rate"] == pytest.approx(1.0)
    assert figures["ratio"] == pytest.approx(1.0 / 1.5)
    # The window is half of today's drain and all of the wait path's.
    assert figures["today"]["share"] == pytest.approx(0.5)
    assert figures["wait"]["share"] == pytest.approx(1.0)


def test_drains_that_never_overlapped_give_no_figure() -> None:
    with pytest.raises(ValueError, match="did not overlap"):
        window_rates({"today": [1.0, 2.0], "wait": [3.0, 4.0]})


def test_the_fleets_start_in_turns() -> None:
    assert [order(round_) for round_ in range(3)] == [
        ("today", "wait"),
        ("wait", "today"),
        ("today", "wait"),
    ]


def test_the_report_gives_each_lines_median_and_every_round() -> None:
    rounds = [(0.80, 0.9), (0.95, 0.7), (1.10, 0.8)]
    rows = [
        {
            "broker": "stream",
            "workers": 2,
            "round": index,
            "window_s": 1.0,
            "ratio": ratio,
            "today": {"rate": 100.0, "share": share},
            "wait": {"rate": 100.0 * ratio, "share": 1.0},
        }
        for index, (ratio, share) in enumerate(rounds)
    ]
    raw = {"run_id": "r1", "options": {"drain": "30000"}, "rows": rows, "errors": []}
    text = markdown(raw)
    assert "| stream | 2 | **0.95x** | 0.80, 0.95, 1.10 | 70% or more |" in text
    assert "wait/today 0.80x over 1.00 s (90% / 100% of the drains)" in round_line(
        rows[0]
    )


def test_the_defaults_are_item_3s_workers_on_the_stream() -> None:
    args = parse([])
    assert (args.brokers, args.workers_list, args.drain) == ("stream", "1,2", 100_000)
