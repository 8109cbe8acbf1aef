"""The fleet benchmark's figures (bench/fleet.py) and its app's settings."""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

from bench import cgroups, fleet, fleet_run
from bench.fleet import PATHS, _rounds, parse
from bench.fleet_app import FleetApp, FleetSettings
from bench.fleet_report import markdown, row_line, side_by_side, summarize
from bench.procs import machine_busy, machine_ticks, taskiq_worker_argv


def batch(size: int, sent: float, start: float, pid: int) -> list[list[float]]:
    """The records of one batch of ``size`` messages, all sent at ``sent``."""
    return [[sent, float(size), start, float(pid)] for _ in range(size)]


def test_mean_batch_counts_each_batch_once_whatever_its_size() -> None:
    # Batches of 100 and 20: 120 messages, 2 batches, mean 60.
    records = batch(100, 0.0, 0.3, 1) + batch(20, 1.0, 1.5, 2)
    figures = summarize(records, 100, 0.5, 300, 0.05)
    assert figures["messages"] == 120
    assert figures["batches"] == pytest.approx(2)
    assert figures["mean_batch"] == pytest.approx(60)
    assert figures["procs"] == 2


def test_ideal_is_the_smaller_of_batch_size_and_what_a_timeout_gathers() -> None:
    records = batch(50, 0.0, 0.1, 1)
    # 300 msg/s over 0.5 s would gather 150: the batch size bounds it.
    assert summarize(records, 100, 0.5, 300, 0.05)["fill"] == pytest.approx(0.5)
    # 40 msg/s over 0.5 s gathers 20: batches of 50 cannot be expected.
    slow = summarize(records, 100, 0.5, 40, 0.05)
    assert slow["ideal"] == pytest.approx(20)
    assert slow["fill"] == pytest.approx(2.5)


def test_waits_are_from_send_to_batch_start_and_late_beyond_the_slack() -> None:
    starts = [10.100, 10.200, 10.540, 10.560, 10.900]  # all sent at 10.0
    records = [[10.0, 1.0, start, 1.0] for start in starts]
    figures = summarize(records, 100, 0.5, 300, 0.05)
    assert figures["p50_ms"] == pytest.approx(540)
    assert figures["p99_ms"] == pytest.approx(900)
    assert figures["max_ms"] == pytest.approx(900)
    # Above 500 + 50 ms: 560 and 900; 540 is within the slack.
    assert figures["late"] == 2


def test_no_results_give_no_figures_and_the_report_says_so() -> None:
    assert summarize([], 100, 0.5, 300, 0.05) == {"messages": 0}
    raw = {
        "run_id": "r",
        "meta": {
            "date": "d",
            "nproc": 2,
            "code": "c",
            "options": {
                "batch_size": 100,
                "batch_timeout": 0.5,
                "duration": 1,
                "slack_ms": 50,
            },
        },
        "rows": [{"broker": "list", "workers": 4, "messages": 0}],
        "errors": ["nats skipped: unreachable"],
    }
    text = markdown(raw)
    assert "| list | 4 | no results |" in text
    assert "- nats skipped: unreachable" in text


def test_settings_travel_to_the_workers_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = FleetSettings("redis://h:1/2", "q", "nats", 7, 0.25)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert FleetSettings.from_env() == settings


def test_a_lagging_producer_shows_the_rate_asked_and_the_rate_sent() -> None:
    figures = summarize(batch(100, 0.0, 0.1, 1), 100, 0.5, 1500, 0.05)
    row = {"broker": "stream", "workers": 1, "rate": 2000.0, "sent_rate": 1500.0}
    raw = {
        "run_id": "r",
        "meta": {
            "date": "d",
            "nproc": 2,
            "code": "c",
            "options": {
                "batch_size": 100,
                "batch_timeout": 0.5,
                "duration": 1,
                "slack_ms": 50,
            },
        },
        "rows": [{**row, **figures}, {**row, **figures, "sent_rate": 1990.0}],
        "errors": [],
    }
    lines = markdown(raw).splitlines()
    assert lines[-2].startswith("| stream | 1 | 2,000 (sent 1,500) | 100.0 |")
    assert lines[-1].startswith("| stream | 1 | 1,990 | 100.0 |")


def test_the_machine_share_busy_is_busy_ticks_over_all_ticks_between_readings() -> None:
    assert machine_busy((100, 400), (250, 600)) == 0.75
    assert machine_busy((5, 9), (5, 9)) == 0.0
    busy, total = machine_ticks()
    assert 0 <= busy <= total


def test_a_row_shows_the_producer_cpu_and_the_machine_busy_share() -> None:
    figures = summarize(batch(100, 0.0, 0.1, 1), 100, 0.5, 200, 0.05)
    row = {"broker": "amqp", "workers": 4, "rate": 200.0, "sent_rate": 200.0}
    line = row_line(
        {**row, **figures, "cpu_s": 3.0, "producer_cpu_s": 1.25, "busy": 0.987}
    )
    assert "| 3.0 | 1.2 | 99% | 100 |" in line
    assert "| — | — | 100 |" in row_line({**row, **figures, "cpu_s": 3.0})


def test_the_path_travels_to_the_workers_and_defaults_to_today(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = FleetSettings("redis://h:1/2", "q", "stream", 100, 0.5, True)
    for key, value in waiting.to_env().items():
        monkeypatch.setenv(key, value)
    assert FleetSettings.from_env().wait_in_broker is True
    monkeypatch.setenv("TBF_WAIT_IN_BROKER", "False")
    assert FleetSettings.from_env().wait_in_broker is False
    assert FleetSettings("u", "q").wait_in_broker is False
    assert PATHS == {"today": False, "wait": True, "wait-plain": True}


def test_both_paths_are_reported_side_by_side_per_broker_rate_and_n() -> None:
    def row(path: str, workers: int, size: int, start: float) -> dict[str, Any]:
        figures = summarize(batch(size, 0.0, start, 1), 100, 0.5, 300, 0.05)
        return {
            "broker": "stream",
            "workers": workers,
            "path": path,
            "rate": 300.0,
            "sent_rate": 300.0,
            **figures,
        }

    rows = [
        row("today", 4, 25, 0.5),
        row("wait", 4, 100, 0.3),
        row("today", 8, 20, 0.5),
        {"broker": "stream", "workers": 8, "path": "wait", "rate": 300.0},
    ]
    raw = {
        "run_id": "r",
        "meta": {
            "date": "d",
            "nproc": 2,
            "code": "c",
            "options": {
                "batch_size": 100,
                "batch_timeout": 0.5,
                "duration": 1,
                "slack_ms": 50,
            },
        },
        "rows": rows,
        "errors": [],
    }
    lines = markdown(raw).splitlines()
    assert "| stream | 300 | 4 | 0.25 | 1.00 | 500 / 500 | 300 / 300 |" in lines
    assert "| stream | 300 | 8 | 0.20 | — | 500 / 500 | — |" in lines
    assert lines[-1] == "| stream | 8 | no results |"
    assert lines[-2].endswith("| 20 | today |")
    assert side_by_side(rows[:1]) == []  # one path: no comparison
    forwarded = [*rows[:2], {**row("wait", 4, 50, 0.4), "path": "wait-plain"}]
    table = side_by_side(forwarded)
    assert table[0].endswith("| fill wait-plain | p50/p99 ms wait-plain |")
    assert table[2] == (
        "| stream | 300 | 4 | 0.25 | 1.00 | 500 / 500 | 300 / 300 | 0.50 | 400 / 400 |"
    )


def test_repeated_rounds_alternate_the_paths_order() -> None:
    args = parse(["--paths", "today,wait", "--repeat", "3"])
    assert _rounds(args) == [
        (0, "today"),
        (0, "wait"),
        (1, "wait"),
        (1, "today"),
        (2, "today"),
        (2, "wait"),
    ]


async def test_the_result_poller_stops_at_the_first_chunk_with_a_result_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = fakeredis.FakeAsyncRedis()
    monkeypatch.setattr(fleet_run, "RESULT_CHUNK", 3)
    keys = [f"r{index}" for index in range(9)]
    for key in ["r0", "r1", "r2", "r4", "r8"]:
        await client.set(key, 1)
    # The first chunk is complete and dropped; the second lacks r3 and r5:
    # the poll stops there, so r8 of the third stays listed.
    assert await fleet_run.still_missing(client, keys) == keys[3:]
    for key in ["r3", "r5", "r6", "r7"]:
        await client.set(key, 1)
    assert await fleet_run.still_missing(client, keys[3:]) == []
    await fleet_run.wait_results(client, keys, 1.0, lambda: True)
    await client.aclose()


async def test_the_result_poller_says_how_many_came_when_the_fleet_died() -> None:
    client = fakeredis.FakeAsyncRedis()
    await client.set("r0", 1)
    with pytest.raises(RuntimeError, match="1 of 2 results"):
        await fleet_run.wait_results(client, ["r0", "r1"], 5.0, lambda: False)
    await client.aclose()


def test_a_cpu_capped_run_says_so_in_its_report() -> None:
    assert parse([]).cpu_cap is False
    options = {key: str(value) for key, value in vars(parse(["--cpu-cap"])).items()}
    meta = {"date": "d", "nproc": 2, "code": "c", "options": options}
    raw = {"run_id": "r", "meta": meta, "rows": [], "errors": []}
    assert "CPU-capped: the worker processes share 0.5 core each" in markdown(raw)
    meta["options"] = {**options, "cpu_cap": "False"}
    assert "CPU-capped" not in markdown(raw)


def test_a_cpu_cap_the_machine_cannot_give_stops_before_any_fleet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cgroups, "unavailable", lambda: "capped drains need root")
    monkeypatch.setattr(sys, "argv", ["bench.fleet", "--cpu-cap"])
    assert fleet.main() == 2
    assert "--cpu-cap: capped drains need root" in capsys.readouterr().err


class _Broker:
    """A producer broker that counts its startups and shutdowns."""

    def __init__(self) -> None:
        self.startups = 0
        self.shutdowns = 0

    async def startup(self) -> None:
        self.startups += 1

    async def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.mark.parametrize("cpu_cap", [False, True])
async def test_a_line_starts_its_producer_once_and_caps_the_fleet_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_cap: bool
) -> None:
    broker = _Broker()
    settings = FleetSettings("redis://h:1/2", "q")
    app = FleetApp(settings, broker, SimpleNamespace(kiq=None))  # type: ignore[arg-type]
    monkeypatch.setattr(fleet_run, "build", lambda s: app)
    budget = tmp_path / "cgroup.procs"

    @contextlib.contextmanager
    def cpu_budget(cores: float) -> Iterator[Path]:
        assert cores == 1.0  # 0.5 core per worker process, two of them
        yield budget

    monkeypatch.setattr(cgroups, "cpu_budget", cpu_budget)
    commands: list[list[str]] = []

    def started(argv: list[str], *_: Any) -> Any:
        commands.append(argv)
        raise RuntimeError("no fleet in a unit test")

    monkeypatch.setattr(fleet_run, "started", started)
    args = parse(["--cpu-cap"] if cpu_cap else [])
    with pytest.raises(RuntimeError, match="no fleet"):
        await fleet_run.measure(None, settings, 2, 0.0, args, tmp_path / "log")  # type: ignore[arg-type]
    assert (broker.startups, broker.shutdowns) == (1, 1)
    (argv,) = commands
    assert (argv[:2] == ["sh", "-c"] and argv[3] == str(budget)) is cpu_cap
    worker = taskiq_worker_argv("bench.fleet_app:broker", 2)
    assert argv[-len(worker) :] == worker


async def test_a_line_leaves_none_of_its_redis_keys_behind() -> None:
    client = fakeredis.FakeAsyncRedis()
    mine = ["tbf-1", "tbf-1:ab12", "{tbf-1:fleet}:wake", "{tbf-1:fleet}:q:"]
    # Another queue's task names, even one whose queue name extends this one.
    others = ["{tbf-10:fleet}:wake", "{other:fleet}:wake", "other"]
    for key in mine + others:
        await client.set(key, 1)
    await fleet.cleanup(client, FleetSettings("redis://h:1/2", "tbf-1"))
    assert sorted(await client.keys()) == sorted(key.encode() for key in others)
    await client.aclose()
