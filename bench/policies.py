"""What each batch policy costs, and memory with 100,000 distinct keys.

    python -m bench.policies [--messages N] [--rounds R]

For each policy (``bench/policies_app.py``) a real ``taskiq worker``
drains N pre-loaded messages (``{"k": key, "c": cost}`` items, results on,
``RedisStreamBroker``); rounds interleave the policies. Reported per
policy: the drain rate and the rate per worker CPU-second (medians), their
ratio to no policy in the same round, and the worker's peak RSS. ``key``
spreads the messages over 100 keys; ``key-distinct`` gives every message
its own key (N distinct keys, ``batch_max_keys=1000``,
``batch_concurrency=8``): a memory test, its batches hold one message each.
Needs Redis at ``REDIS_URL``.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from bench.measure import (
    create_group,
    delete_prefix,
    preload,
    stream_probe,
    watch_drain,
)
from bench.procs import Proc

POLICIES = ["none", "key", "key-distinct", "cost", "where", "min_size", "deadline"]


def payloads(policy: str, count: int) -> list[bytes]:
    """The messages, as ``kiq`` builds them (taskiq's JSON layout)."""
    out = []
    for n in range(count):
        # A batched task's settings stay with the worker: only message
        # labels travel.
        labels: dict[str, str] = {}
        types: dict[str, int] = {}
        if policy == "deadline":
            labels["batch_deadline"] = str(time.time() + 3600)
            types["batch_deadline"] = 4
        message = {
            "task_id": uuid.uuid4().hex,
            "task_name": "work",
            "labels": labels,
            "labels_types": types,
            "args": [{"k": n if policy == "key-distinct" else n % 100, "c": n % 7}],
            "kwargs": {},
        }
        out.append(json.dumps(message).encode())
    return out


async def drain(redis: Redis, url: str, policy: str, count: int) -> dict[str, float]:
    """One drain of one policy by a real worker; its rate, CPU and peak RSS."""
    queue = f"tbbench-policies-{uuid.uuid4().hex[:8]}"
    await create_group(redis, queue)
    await preload(redis, queue, "stream", payloads(policy, count))
    log = Path("bench/results/policies") / f"{queue}-{policy}.log"
    env = {"TBP_QUEUE": queue, "TBP_POLICY": policy, "REDIS_URL": url}
    argv = [sys.executable, "-m", "taskiq", "worker", "bench.policies_app:broker"]
    argv += ["--workers", "1", "--log-level", "WARNING", "--ack-type", "when_saved"]
    worker = Proc(argv, env, log, policy)
    try:
        worker.wait_children(1, 60)
        cpu: list[float] = []

        async def started() -> None:
            cpu.append(worker.cpu_seconds())

        timing = await watch_drain(
            stream_probe(redis, queue),
            count,
            max(120, count / 200),
            worker.alive,
            on_start=started,
        )
        used = worker.cpu_seconds() - cpu[0]
        return {
            "rate": timing.rate,
            "per_cpu": count / max(used, 1e-9),
            "peak_rss_mb": worker.peak_rss() / 2**20,
        }
    finally:
        worker.kill()
        await delete_prefix(redis, queue)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated, with none"
    )
    args = parser.parse_args()
    chosen = [policy for policy in POLICIES if policy in args.policies.split(",")]
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    runs: dict[str, list[dict[str, float]]] = {policy: [] for policy in chosen}
    async with Redis.from_url(url) as redis:
        for round_ in range(args.rounds):
            shift = round_ % len(chosen)  # each round starts elsewhere
            order = chosen[shift:] + chosen[:shift]
            for policy in order:
                runs[policy].append(await drain(redis, url, policy, args.messages))
    print(f"{args.messages:,} messages per drain, {args.rounds} rounds (medians)\n")
    print("| policy | msg/s | msg per CPU-s | per CPU-s vs none | peak RSS MB |")
    print("|---|---|---|---|---|")
    for policy in chosen:
        rate = statistics.median(run["rate"] for run in runs[policy])
        per_cpu = statistics.median(run["per_cpu"] for run in runs[policy])
        ratios = [
            run["per_cpu"] / none["per_cpu"]
            for run, none in zip(runs[policy], runs["none"], strict=True)
        ]
        rss = max(run["peak_rss_mb"] for run in runs[policy])
        print(
            f"| {policy} | {rate:,.0f} | {per_cpu:,.0f} | "
            f"{statistics.median(ratios):.2f} | {rss:.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
