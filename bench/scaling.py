"""``python -m bench.scaling``: how far one Redis carries N batched worker processes.

Once a few batched workers run, the shared Redis server is the wall. For
each N of ``--workers-list`` (default 1,2,4; e.g. ``1,2,4,8`` on a
bigger machine) a pre-loaded stream of ``--messages`` is drained by
``taskiq worker --workers N`` (the batched no-op task, batch_size 100,
results on, as ``batched-stream``), and the run reports:

* the drain rate (msg/s) and the worker processes' CPU (cores);
* the Redis server's CPU (cores, ``INFO cpu``), and per message (µs of
  server CPU per message, reading and parsing included); its inverse is
  the rate at which this Redis would use a whole core;
* Redis's command time per message (``INFO commandstats``, see
  ``bench/commandstats.py``), in all and per command, and its ratio to the
  floor: ``bench.floor``, a consumer that sends only the commands a worker
  cannot do without (``XREADGROUP COUNT 100``, a ``SET ... EX`` per
  result, one ``XACK`` per 100), measured in the same round.

Rounds interleave every N (shuffled) and the floor; figures are medians
(min-max) over the rounds, ratios medians of per-round ratios. Redis at
``REDIS_URL``; its counters are server-wide, so use a Redis nothing else
uses meanwhile. Writes ``<out>/scaling-<run id>.md`` and ``.json``.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import commandstats
from bench import workloads as w
from bench.figures import cell, stat
from bench.measure import create_group, delete_prefix, preload
from bench.procs import started
from bench.suite import log
from bench.taskiq_app import build
from bench.workloads import CpuMeter, Env, Metrics

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
FLOOR = "floor"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling", description=__doc__
    )
    parser.add_argument("--workers-list", default="1,2,4", help="e.g. 1,2,4,8")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-floor", action="store_true", help="skip bench.floor")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


async def floor_drain(env: Env, messages: int) -> Metrics:
    """``bench.floor`` draining a pre-loaded stream: the floor of Redis's work."""
    queue = env.queue(FLOOR)
    s = env.settings(queue)  # results on: the floor stores them, as a worker
    app = build(s)
    try:
        await create_group(env.redis, queue)
        payloads, task_ids = w.messages_for(app, messages)
        await preload(env.redis, queue, "stream", payloads)
        del payloads
        argv = [sys.executable, "-m", "bench.floor"]
        environ = {**s.to_env(), "TBB_COUNT": str(messages)}
        before = await commandstats.snapshot(env.redis)
        with started(argv, environ, env.log(queue), FLOOR) as proc:
            cpu = CpuMeter(env, proc)
            timing = await w._watch(env, s, proc, messages, [], cpu.start)
            await cpu.stop()
            after = await commandstats.snapshot(env.redis)
            peak = proc.peak_rss()
        await w.verify(env, s, messages, task_ids)
    finally:
        await w.cleanup(env, queue)
    metrics = w._drain_metrics(timing, peak, cpu)
    metrics.update(commandstats.per_message(before, after, messages))
    return metrics


async def workers_drain(env: Env, workers: int, messages: int) -> Metrics:
    """``taskiq worker --workers N``, batched no-op task, results on."""
    return await w.taskiq_drain(env, f"s{workers}", messages, workers, batched=True)


def derived(metrics: Metrics) -> Metrics:
    """Figures computed from a run's: Redis CPU per message and its ceiling."""
    rate, redis_cpu = metrics["rate"], metrics["redis_cpu"]
    per_message = redis_cpu / rate * 1e6 if rate else 0.0
    return {
        "redis_cpu_usec": per_message,
        "redis_ceiling": 1e6 / per_message if per_message else 0.0,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(n) for n in args.workers_list.split(",") if n.strip()]
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    redis = Redis.from_url(redis_url)
    await redis.ping()
    env = Env(redis_url, "", run_id, args.out / run_id, redis)
    names = ([] if args.no_floor else [FLOOR]) + [f"w{n}" for n in counts]
    runs: dict[str, list[Metrics | None]] = {name: [] for name in names}
    errors: list[str] = []
    shuffle = random.Random(args.seed)
    log(f"scaling run {run_id}: N = {counts}, {args.messages:,} messages, {redis_url}")
    try:
        for round_no in range(args.rounds):
            order = list(names)
            shuffle.shuffle(order)
            for name in order:
                log(f"round {round_no + 1}/{args.rounds}: {name} ...")
                try:
                    if name == FLOOR:
                        metrics = await floor_drain(env, args.messages)
                    else:
                        metrics = await workers_drain(env, int(name[1:]), args.messages)
                except Exception as exc:  # reported, the others go on
                    runs[name].append(None)
                    errors.append(f"{name}, round {round_no + 1}: {exc!r}")
                    log(f"  FAILED: {exc!r}")
                    continue
                metrics.update(derived(metrics))
                runs[name].append(metrics)
                log(
                    f"  {metrics['rate']:,.0f} msg/s, workers "
                    f"{metrics['worker_cpu']:.2f} cores, Redis "
                    f"{metrics['redis_cpu']:.2f} cores, "
                    f"{metrics[commandstats.USEC]:.2f} µs/msg of commands"
                )
    finally:
        await delete_prefix(redis, f"tbbench-{run_id}")
        server = await redis.info("server")
        await redis.aclose()
    return {
        "run_id": run_id,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "redis_server": server.get("redis_version", "?"),
        "code": os.environ.get("BENCH_CODE_VERSION", ""),
        "messages": args.messages,
        "workers_list": counts,
        "runs": runs,
        "errors": errors,
    }


def markdown(raw: dict[str, Any]) -> str:
    runs: dict[str, list[Metrics | None]] = raw["runs"]
    floor = runs.get(FLOOR, [])
    out = [
        f"Scaling run `{raw['run_id']}`, {raw['date']}, nproc={raw['nproc']}, "
        f"Redis {raw['redis_server']}{', code ' + raw['code'] if raw['code'] else ''}"
        f"; {raw['messages']:,} messages per drain, {len(floor) or '-'} round(s) "
        "with the floor. Figures: median (min\u2013max) over the rounds.",
        "",
        "| N | msg/s | worker cores | Redis cores | Redis CPU µs/msg "
        "| Redis 1-core ceiling msg/s | command µs/msg | / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, results in runs.items():
        done = [m for m in results if m is not None]

        def figure(metric: str, digits: int = 3, done: list[Metrics] = done) -> str:
            return cell(stat([m[metric] for m in done if metric in m]), digits)

        ratios = [
            m[commandstats.USEC] / f[commandstats.USEC]
            for m, f in zip(results, floor, strict=False)
            if m is not None and f is not None and f.get(commandstats.USEC)
        ]
        label = "floor (bench.floor, 1 process)" if name == FLOOR else name[1:]
        out.append(
            f"| {label} | {figure('rate')} | {figure('worker_cpu', 2)} "
            f"| {figure('redis_cpu', 2)} | {figure('redis_cpu_usec')} "
            f"| {figure('redis_ceiling')} | {figure(commandstats.USEC)} "
            f"| {cell(stat(ratios)) if name != FLOOR else '1'} |"
        )
    out.append("")
    out.extend(commandstats.markdown(runs))
    if raw["errors"]:
        out += ["Failures:", "", *[f"- {error}" for error in raw["errors"]], ""]
    return "\n".join(out)


def main() -> int:
    args = parse(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    raw = asyncio.run(run(args))
    text = markdown(raw)
    base = args.out / f"scaling-{raw['run_id']}"
    base.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    base.with_suffix(".md").write_text(text + "\n")
    print()
    print(text)
    print(f"\n(written to {base}.md and .json)")
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
