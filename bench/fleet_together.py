"""``python -m bench.fleet_together``: today's path and the wait path drain at once.

Issue 18 item 3 asks a pre-loaded drain on the wait path to run at 0.9x
today's rate or better. ``python -m bench.fleet --drain M`` runs the two
paths one after the other; on a machine whose speed drifts within a
minute (one worker's CPU per message went from 15.5 to 26.2 us on the
same path, docs/fleet.md), a pair's ratio then says as much about the
machine's two moments as about the paths.

Here each round starts two fleets of N ``taskiq worker`` processes at the
same moment: one on today's path (``wait_in_broker=False``) and one on
the wait path, each draining its own queue, pre-loaded with M messages
before either starts. They share the cores and the broker's server, so
whatever the machine does weighs on both alike. Each path's rate is
counted over the window where both drain: the messages whose batch
started between the later of the two first batch starts and the earlier
of the two last ones, divided by the window's length. The order the
fleets start in alternates between rounds.

Both fleets share the machine: with N = 1, two worker processes and the
server share the two cores (the contention of two workers of one path),
and each path drains at about half its rate alone. The figure is the
paths' relative cost under the same load, not either's rate alone.

The report gives, per broker and N, each round's wait / today, their
median and the window's share of each drain. Writes
``<out>/together-<run id>.json``; queues are deleted after each round and
the fleets killed, on error too.
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.brokers import unreachable
from bench.fleet import DEFAULT_REDIS, PATHS, cleanup
from bench.fleet_app import FleetSettings, build
from bench.fleet_run import fetch, preload, wait_results
from bench.procs import interruptible, started, taskiq_worker_argv

#: The two paths of every round, today's first in even rounds.
BOTH = ("today", "wait")
#: Index of the batch start in a message's record (``bench/fleet_app.py``).
START = 2


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet_together", description=__doc__
    )
    parser.add_argument("--brokers", default="stream")
    parser.add_argument("--workers-list", default="1,2", help="e.g. 1,2")
    # 30,000 messages drain in about a second here: too short a window
    # (rounds of one run spread 0.66-1.33x); 100,000 give 3-6 s.
    parser.add_argument("--drain", type=int, default=100_000, help="messages per path")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per line")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-timeout", type=float, default=0.5, help="seconds")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def window_rates(starts: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Each path's rate over the window where every path drains.

    :param starts: per path, each message's batch start (seconds).
    :return: ``window_s``, per path ``rate`` (messages started in the
        window / its length) and ``share`` (the window / the path's own
        drain), and ``ratio`` (wait / today) when both paths are given.
    """
    low = max(min(values) for values in starts.values())
    high = min(max(values) for values in starts.values())
    window = high - low
    if window <= 0:
        raise ValueError("the drains did not overlap")
    figures: dict[str, Any] = {"window_s": window}
    for path, values in starts.items():
        inside = sum(1 for start in values if low <= start < high)
        span = max(values) - min(values)
        figures[path] = {"rate": inside / window, "share": window / span}
    if set(BOTH) <= set(starts):
        figures["ratio"] = figures["wait"]["rate"] / figures["today"]["rate"]
    return figures


def order(round_: int) -> tuple[str, ...]:
    """The order the fleets start in: today's first in even rounds.

    :param round_: the round, from 0.
    :return: the paths, the first to start first.
    """
    return BOTH if round_ % 2 == 0 else BOTH[::-1]


async def together(
    redis: Redis,
    url: str,
    line: tuple[str, int, int],
    run_id: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One round: both paths' fleets drain their queues at once."""
    broker, workers, round_ = line
    name = f"{broker}-n{workers}-{round_}"
    settings = {
        path: FleetSettings(
            url,
            f"tbbench-together-{run_id}-{name}-{path}",
            broker,
            args.batch_size,
            args.batch_timeout,
            PATHS[path],
        )
        for path in BOTH
    }
    apps = {path: build(s) for path, s in settings.items()}
    try:
        for app in apps.values():
            await app.broker.startup()
        ids = {path: await preload(apps[path].task.kiq, args.drain, 0) for path in BOTH}
        argv = taskiq_worker_argv("bench.fleet_app:broker", workers)
        with contextlib.ExitStack() as stack:
            procs = {
                path: stack.enter_context(
                    started(
                        argv,
                        settings[path].to_env(),
                        args.out / run_id / f"{name}-{path}.log",
                        f"{name}-{path}",
                    )
                )
                for path in order(round_)
            }
            timeout = 60 + args.drain / 500
            await asyncio.gather(
                *(
                    wait_results(
                        redis,
                        [f"{settings[path].queue}:{task_id}" for task_id in ids[path]],
                        timeout,
                        procs[path].alive,
                    )
                    for path in BOTH
                )
            )
        starts: dict[str, list[float]] = {}
        for path in BOTH:
            records, errors = await fetch(apps[path].broker.result_backend, ids[path])
            if errors:
                raise RuntimeError(f"{path}: {errors} results were errors")
            starts[path] = [record[START] for record in records]
    finally:
        for path, app in apps.items():
            await app.broker.shutdown()
            await cleanup(redis, settings[path])
    return {
        "broker": broker,
        "workers": workers,
        "round": round_,
        **window_rates(starts),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    async with Redis.from_url(url) as redis:
        for broker in args.brokers.split(","):
            why = unreachable(broker) if broker in ("amqp", "nats") else None
            if why:
                errors.append(f"{broker} skipped: {why}")
                continue
            for workers in [int(n) for n in args.workers_list.split(",")]:
                for round_ in range(args.repeat):
                    line = (broker, workers, round_)
                    try:
                        row = await together(redis, url, line, run_id, args)
                    except Exception as exc:  # reported, the others go on
                        errors.append(f"{line}: {exc!r}")
                        print(f"  {line} FAILED: {exc!r}", flush=True)
                        continue
                    rows.append(row)
                    print("  " + round_line(row), flush=True)
    return {"run_id": run_id, "options": vars(args), "rows": rows, "errors": errors}


def round_line(row: dict[str, Any]) -> str:
    """One round, as the run prints it."""
    today, wait = row["today"], row["wait"]
    return (
        f"{row['broker']} N={row['workers']} round {row['round']}: "
        f"today {today['rate']:,.0f} msg/s, wait {wait['rate']:,.0f} msg/s, "
        f"wait/today {row['ratio']:.2f}x over {row['window_s']:.2f} s "
        f"({today['share']:.0%} / {wait['share']:.0%} of the drains)"
    )


def markdown(raw: dict[str, Any]) -> str:
    """Per broker and N: the median of wait / today over the rounds, and each."""
    lines = [
        f"Run `{raw['run_id']}`: both paths drain at once "
        f"({raw['options']['drain']} messages each), wait / today per round",
        "",
        "| broker | N | median | rounds | window's share of the drains |",
        "|---|---|---|---|---|",
    ]
    lines_of: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in raw["rows"]:
        lines_of.setdefault((row["broker"], row["workers"]), []).append(row)
    for (broker, workers), rows in lines_of.items():
        ratios = [row["ratio"] for row in rows]
        shares = [min(row["today"]["share"], row["wait"]["share"]) for row in rows]
        lines.append(
            f"| {broker} | {workers} | **{statistics.median(ratios):.2f}x** | "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
            + f" | {min(shares):.0%} or more |"
        )
    lines += [f"\nerror: {error}" for error in raw["errors"]]
    return "\n".join(lines)


def main() -> int:
    args = parse(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    raw = interruptible(run(args))
    if raw is None:
        return 130
    raw["options"] = {key: str(value) for key, value in raw["options"].items()}
    path = args.out / f"together-{raw['run_id']}.json"
    path.write_text(json.dumps(raw, indent=1))
    print()
    print(markdown(raw))
    print(f"\n(written to {path})")
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
