"""CPU time of a batched drain's worker, per function, under cProfile.

``python -m bench.cpu_profile OUT.prof [--messages N] [--broker B]``:
pre-loads N messages (60,000) of the batched no-op app on a Redis stream
(``--broker``: stream, list, amqp or nats), drains them
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
from typing import Any

#: Redis the drain runs on.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: Seconds a drain may last at most.
DRAIN_TIMEOUT = 300


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


class Queue:
    """The drain's queue on its broker: pre-loading, progress, deletion.

    Imports only what a broker needs (no Celery, no PostgreSQL).

    :param redis: the Redis the results and batch sizes go to.
    :param s: the app's settings (its broker and queue).
    """

    def __init__(self, redis: Any, s: Any) -> None:
        from bench import brokers

        self.redis = redis
        self.s = s
        self.owner: Any = None
        if s.broker == "amqp":
            self.owner = brokers.AmqpQueue(s.queue)
        elif s.broker == "nats":
            self.owner = brokers.NatsConsumer(s.queue)

    async def preload(self, app: Any, messages: int) -> None:
        """Put ``work(i)`` for i < messages on the queue, as ``kick`` sends it."""
        from bench import brokers
        from bench.measure import create_group, preload

        kicker = app.task.kicker()
        sent = [
            app.broker.formatter.dumps(kicker._prepare_message(item))
            for item in range(messages)
        ]
        if self.s.broker == "amqp":
            await self.owner.open()
            await brokers.amqp_preload(app.broker, sent)
            await brokers.wait_ready(self.owner.ready, messages, "RabbitMQ")
        elif self.s.broker == "nats":
            await self.owner.open()
            await brokers.nats_preload(app.broker, sent)
        else:
            if self.s.broker == "stream":
                await create_group(self.redis, self.s.queue)
            payloads = [message.message for message in sent]
            await preload(self.redis, self.s.queue, self.s.broker, payloads)

    async def batched(self) -> int:
        """Messages the worker ran so far (the batch sizes it reported)."""
        sizes = await self.redis.lrange(f"{self.s.queue}:sizes", 0, -1)
        return sum(int(size) for size in sizes)

    async def delete(self) -> None:
        """Delete the queue and every Redis key under its name."""
        from bench.measure import delete_prefix

        try:
            if self.owner is not None:
                await self.owner.close()
        finally:
            await delete_prefix(self.redis, self.s.queue)
            await self.redis.delete(f"autoclaim:taskiq:{self.s.queue}")


async def drain(out: Path, messages: int, broker: str = "stream") -> float:
    """Drain ``messages`` with a profiled worker; its rate, start-up included.

    Done when the batch sizes the worker reports (``bench.taskiq_app``'s
    reporter) add up to ``messages``: the same test on every broker.
    """
    from redis.asyncio import Redis

    from bench.procs import started
    from bench.taskiq_app import AppSettings, build

    redis = Redis.from_url(REDIS_URL)
    queue_name = f"tbbench-cpu-{uuid.uuid4().hex[:10]}"
    s = AppSettings(redis_url=REDIS_URL, queue=queue_name, broker=broker, batched=True)
    app = build(s)
    argv = [sys.executable, "-m", "bench.cpu_profile", "--worker", str(out)]
    argv += ["bench.taskiq_worker:broker", "--log-level", "WARNING"]
    argv += ["--ack-type", "when_saved"]
    queue = Queue(redis, s)
    try:
        await queue.preload(app, messages)
        log = out.with_suffix(".log")
        with started(argv, s.to_env(), log, s.queue) as proc:
            began = time.monotonic()
            while await queue.batched() < messages:
                if not proc.alive() or time.monotonic() - began > DRAIN_TIMEOUT:
                    raise RuntimeError(f"the drain did not end:\n{proc.output()}")
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - began
            proc.process.terminate()
            await asyncio.to_thread(proc.process.wait, 120)
        return messages / seconds
    finally:
        await queue.delete()
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
    parser.add_argument(
        "--broker", choices=("stream", "list", "amqp", "nats"), default="stream"
    )
    args = parser.parse_args()
    rate = asyncio.run(drain(args.out, args.messages, args.broker))
    print(f"drained at {rate:,.0f} msg/s under cProfile (start-up included)")
    report(args.out, args.messages)


if __name__ == "__main__":
    main()
