"""``python -m bench [--quick] [--only REGEX] ...``: run the benchmark suite.

Needs Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0) and, for
the PostgreSQL sink, ``PG_DSN`` (default postgresql://postgres@127.0.0.1:5432/test).
Prints a Markdown report and writes it, with every raw figure (JSON), to
``--out`` (default bench/results/).
"""

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

from redis.asyncio import Redis

from bench import broker_profiles, report, suite
from bench.measure import delete_prefix
from bench.procs import ROOT
from bench.workloads import Env

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3,000 messages per drain, 1 round, no profile (for development)",
    )
    parser.add_argument("--rounds", type=int, help="runs of each workload")
    parser.add_argument("--messages", type=int, help="messages per drain")
    parser.add_argument("--only", help="run the workloads whose name matches")
    parser.add_argument(
        "--extended",
        action="store_true",
        help="also the list-broker and plain-task-with-middleware drains",
    )
    parser.add_argument(
        "--profile",
        type=int,
        help="messages of the profiled drain (0: no profile)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> suite.Options:
    opts = suite.QUICK if args.quick else suite.FULL
    changes: dict[str, Any] = {"only": args.only, "extended": args.extended}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.messages is not None:
        changes["messages"] = args.messages
    if args.profile is not None:
        changes["profile_messages"] = args.profile
    if args.only is not None and args.profile is None:
        changes["profile_messages"] = 0
    return dataclasses.replace(opts, **changes)


def _code_version() -> str:
    """The commit whose taskiq_batching is measured, and whether it is edited.

    ``BENCH_CODE_VERSION`` overrides it (a run from an exported tree).
    """
    if os.environ.get("BENCH_CODE_VERSION"):
        return os.environ["BENCH_CODE_VERSION"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        edited = subprocess.run(
            ["git", "status", "--porcelain", "--", "taskiq_batching"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes in taskiq_batching/" if edited else "")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


async def _pg_ok(dsn: str) -> bool:
    try:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(dsn, timeout=5)
    except Exception as exc:
        print(f"PostgreSQL at {dsn} not usable ({exc!r}): PG workloads skipped")
        return False
    await connection.close()
    return True


async def _drop_tables(dsn: str, run_id: str) -> None:
    """Drop any table of this run a crashed workload may have left."""
    try:
        import asyncpg

        connection = await asyncpg.connect(dsn, timeout=5)
    except Exception:
        return
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1",
            f"tbbench_{run_id}_%",
        )
        for row in rows:
            await connection.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}"')
    finally:
        await connection.close()


async def main(args: argparse.Namespace) -> int:
    opts = options(args)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    pg_dsn = os.environ.get("PG_DSN", DEFAULT_PG)
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    seed = args.seed if args.seed is not None else int(uuid.uuid4().int % 10_000)
    out: Path = args.out
    redis = Redis.from_url(redis_url)
    await redis.ping()
    pg_ok = await _pg_ok(pg_dsn)
    env = Env(redis_url, pg_dsn, run_id, out / run_id, redis)
    started = time.monotonic()
    suite.log(
        f"run {run_id}: {opts.rounds} round(s), {opts.messages:,} messages per "
        f"drain, nproc={os.cpu_count()}, seed {seed}; logs in {env.out}"
    )
    try:
        results = await suite.run_all(env, opts, pg_ok, seed)
        await suite.run_profile(env, opts, env.out / "profile", results)
        await broker_profiles.run_profiles(env, opts, results)
    finally:
        deleted = await delete_prefix(redis, f"tbbench-{run_id}")
        if deleted:
            suite.log(f"deleted {deleted} leftover Redis key(s)")
        await _drop_tables(pg_dsn, run_id)
    server = await redis.info("server")
    await redis.aclose()
    meta = {
        "run_id": run_id,
        "code": _code_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "python": f"Python {platform.python_version()}",
        "taskiq": _version("taskiq"),
        "taskiq_redis": _version("taskiq-redis"),
        "redis_py": _version("redis"),
        "redis_server": server.get("redis_version", "?"),
        "celery": _version("celery"),
        "celery_batches": _version("celery-batches"),
        "seconds": time.monotonic() - started,
        "seed": seed,
        "options": dataclasses.asdict(opts),
    }
    text = report.markdown(results, opts, meta)
    raw = {
        "meta": meta,
        "runs": results.runs,
        "errors": results.errors,
        "skipped": results.skipped,
        "profile": results.profile,
        "brokers": results.brokers,
    }
    _write(out / f"{run_id}.md", text + "\n")
    _write(out / f"{run_id}.json", json.dumps(raw, indent=1))
    print()
    print(text)
    print(f"\n(written to {out / run_id}.md and .json)")
    return 1 if results.errors else 0


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `finally`: workers are killed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    arguments = parse(sys.argv[1:])
    arguments.out.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(arguments)))
