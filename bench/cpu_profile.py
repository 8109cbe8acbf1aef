"""CPU time of a batched drain's worker, per function, under cProfile.

``python -m bench.cpu_profile OUT.prof [--messages N]``: pre-loads N
messages (60,000) of the batched no-op app on a Redis stream, drains them
with the worker running in its own process under ``cProfile`` timed by
``time.process_time`` (CPU seconds, not wall), and prints the total and
the functions called about once per message or more. Unlike wall-clock
samples (``bench.profile_worker``), CPU time is barely moved by other
processes on the machine, so two commits can be compared in turns on a
busy machine: run it from each one's tree (a ``git worktree``). cProfile
weighs every Python call heavily: compare totals between commits, not
with a drain's real rate.

``python -m bench.cpu_profile --worker OUT.prof WORKER_ARGS...`` is the
worker side (``taskiq worker``'s ``start_listen`` in this process).
"""

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

#: Redis the drain runs on.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def worker(out: str, argv: list[str]) -> None:
    """Run ``taskiq worker`` here under cProfile until SIGTERM; write ``out``."""
    from taskiq.cli.worker.args import WorkerArgs
    from taskiq.cli.worker.run import start_listen

    args = WorkerArgs.from_cli(argv)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        start_listen(args)
    finally:
        profile.disable()
        profile.dump_stats(out)


async def drain(out: Path, messages: int) -> float:
    """Drain ``messages`` with a profiled worker; its rate (msg/s)."""
    from redis.asyncio import Redis

    from bench.measure import create_group, delete_prefix, preload, stream_probe
    from bench.measure import watch_drain as watch
    from bench.procs import started
    from bench.taskiq_app import AppSettings, build

    redis = Redis.from_url(REDIS_URL)
    queue = f"tbbench-cpu-{uuid.uuid4().hex[:10]}"
    settings = AppSettings(redis_url=REDIS_URL, queue=queue, batched=True)
    app = build(settings)
    kicker = app.task.kicker()
    payloads = [
        app.broker.formatter.dumps(kicker._prepare_message(item)).message
        for item in range(messages)
    ]
    argv = [sys.executable, "-m", "bench.cpu_profile", "--worker", str(out)]
    argv += ["bench.taskiq_worker:broker", "--log-level", "WARNING"]
    argv += ["--ack-type", "when_saved"]
    try:
        await create_group(redis, queue)
        await preload(redis, queue, "stream", payloads)
        log = out.with_suffix(".log")
        with started(argv, settings.to_env(), log, queue) as proc:
            probe = stream_probe(redis, queue)
            timing = await watch(probe, messages, 300, proc.alive, start_timeout=60)
            proc.process.terminate()
            await asyncio.to_thread(proc.process.wait, 120)
        return timing.rate
    finally:
        await delete_prefix(redis, queue)
        await redis.aclose()


def report(out: Path, messages: int) -> None:
    """Print the total and the functions called once per message or more."""
    stats = pstats.Stats(str(out))
    total: float = stats.total_tt  # type: ignore[attr-defined]
    print(f"worker CPU under cProfile: {total:.2f} s for {messages:,} messages")
    rows = []
    for (path, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls, own = entry[1], entry[2]
        if calls >= 0.9 * messages:
            rows.append((own, calls, f"{Path(path).name}:{line}:{name}"))
    for own, calls, where in sorted(rows, reverse=True)[:40]:
        print(f"{own:7.2f} s self {calls / messages:5.1f}/msg  {where}")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=60_000)
    args = parser.parse_args()
    rate = asyncio.run(drain(args.out, args.messages))
    print(f"drained at {rate:,.0f} msg/s under cProfile")
    report(args.out, args.messages)


if __name__ == "__main__":
    main()
