"""A backlog of a slow task, stock taskiq against the plugin: peak RSS and head-of-line.

``python -m bench.memory [--items 300] [--size 1000000] [--sleep 5] [--window 25]``

For each mode, on a fresh Redis stream: ``--items`` messages of ``--size``
bytes for a slow task, then one plain task, all queued before a real
``taskiq worker`` (one process) starts. The slow task sleeps ``--sleep``
seconds per call: under ``stock`` it is a plain task (no plugin,
``--max-async-tasks 100``); under ``plugin`` it is batched (``batch_size=2``,
one batch at a time). Reported: the worker's peak RSS (VmHWM) over
``--window`` seconds, and when the plain task's result was stored,
counted from the worker's start.

This module is also the worker's app (``bench.memory:broker``), set up by
the ``BENCH_MEMORY_*`` environment variables.
"""

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path

from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from bench.measure import delete_prefix
from bench.procs import ROOT, started, taskiq_worker_argv
from taskiq_batching import BatchingMiddleware, batch_task

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_MEMORY_QUEUE", "bench-memory")
MODE = os.environ.get("BENCH_MEMORY_MODE", "plugin")
SLEEP = float(os.environ.get("BENCH_MEMORY_SLEEP", "5"))


def _broker(mode: str, queue: str) -> AsyncBroker:
    made = RedisStreamBroker(REDIS_URL, queue_name=queue).with_result_backend(
        RedisAsyncResultBackend(REDIS_URL, prefix_str=queue, result_ex_time=600)
    )
    if mode == "plugin":
        made.add_middlewares(BatchingMiddleware())
    return made


broker = _broker(MODE, QUEUE)

if MODE == "plugin":

    @batch_task(broker, task_name="slow", batch_size=2)
    async def slow(items: list[str]) -> None:
        """A slow sink: one call per two items."""
        await asyncio.sleep(SLEEP)

else:

    @broker.task(task_name="slow")
    async def slow_plain(item: str) -> None:
        """The same sink, one call per item."""
        await asyncio.sleep(SLEEP)


@broker.task(task_name="plain")
async def plain() -> int:
    """A task queued behind the backlog."""
    return 1


async def _fill(mode: str, queue: str, items: int, size: int) -> str:
    """Queue the backlog then the plain task; return the plain task's id."""
    sender = _broker("stock", queue)  # the same messages for both modes
    await sender.startup()
    payload = "x" * size
    for _ in range(items):
        await AsyncKicker("slow", sender, {}).kiq(payload)
    task = await AsyncKicker("plain", sender, {}).kiq()
    await sender.shutdown()
    return task.task_id


async def _ready(mode: str, queue: str, task_id: str) -> bool:
    reader = _broker(mode, queue)
    try:
        return await reader.result_backend.is_result_ready(task_id)
    finally:
        await reader.result_backend.shutdown()


def run(
    mode: str, items: int, size: int, sleep: float, window: float
) -> dict[str, float]:
    """One mode: the worker's peak RSS (MB) and the plain task's latency (s)."""
    queue = f"bench-memory-{uuid.uuid4().hex[:8]}"
    task_id = asyncio.run(_fill(mode, queue, items, size))
    env = {
        "BENCH_MEMORY_QUEUE": queue,
        "BENCH_MEMORY_MODE": mode,
        "BENCH_MEMORY_SLEEP": str(sleep),
    }
    argv = [*taskiq_worker_argv("bench.memory:broker"), "--max-async-tasks", "100"]
    log = ROOT / "bench" / "out" / f"memory-{mode}.log"
    latency = float("nan")
    with started(argv, env, Path(log), f"memory-{mode}") as proc:
        proc.wait_children(1, 30)
        start = time.monotonic()
        peak = 0
        while time.monotonic() - start < window:
            peak = max(peak, proc.peak_rss())
            if latency != latency and asyncio.run(_ready(mode, queue, task_id)):
                latency = time.monotonic() - start
            time.sleep(0.2)
        peak = max(peak, proc.peak_rss())
    asyncio.run(_clean(queue))
    return {"peak_rss_mb": peak / 1e6, "plain_latency_s": latency}


async def _clean(queue: str) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(REDIS_URL) as redis:
        await delete_prefix(redis, queue)


def main() -> None:
    """Run both modes and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--sleep", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=25.0)
    parser.add_argument("--modes", default="stock,plugin")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        figures = run(mode, args.items, args.size, args.sleep, args.window)
        print(
            f"{mode:7} items={args.items} size={args.size} sleep={args.sleep}s: "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB, plain task's result "
            f"after {figures['plain_latency_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
