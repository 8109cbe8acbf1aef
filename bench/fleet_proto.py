"""``python -m bench.fleet_proto``: prototypes of fleet batching, measured.

Issue 18 asks N worker processes on one queue to batch like one. This
command measures candidate mechanisms written with raw clients (no plugin),
each in ``bench/fleet_proto_redis.py`` or ``bench/fleet_proto_mq.py``:

    stream-today  stream-wait  stream-wait-fwd
    list-today    list-wait    list-wait-fwd
    nats-today  nats-lease  nats-lease-keep  nats-lease-v1  amqp-today  amqp-sac

(``-fwd``: the producer is a plain kicker writing to the main queue; the
workers forward.) For each mechanism, rate and N: N worker processes
(multiprocessing, spawn) start, the producer sends ``rate`` msg/s for
``--duration`` s (each message's body is its send time, keys round robin
over ``--keys``), every batch is reported by its worker (start time, key,
send times); then the fleet sits idle for ``--idle`` s. Printed per line:

* fill = mean batch / min(batch_size, rate * batch_timeout), and the
  lowest key's fill with ``--keys`` > 1 (each key's ideal from its rate);
* p50/p99/max send → batch start, and ``late`` (> batch_timeout + slack);
* ``cmd/s idle``: commands each worker sent the broker per second while
  nothing was sent (the cost at rest); ``cmd/s load``: per second under load;
* ``--drain M``: M messages pre-loaded, then the fleet starts: msg/s.

Writes ``<out>/fleet-proto-<run>.md`` and ``.json``.
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Any

from bench.fleet_proto_args import arguments
from bench.fleet_proto_common import Batch, Config, Mechanism, Report
from bench.fleet_proto_stats import markdown, summarize

MECHANISMS = (
    "stream-today,stream-wait,stream-wait-fwd,list-today,list-wait,list-wait-fwd,"
    "nats-today,nats-lease,nats-lease-keep,nats-lease-v1,amqp-today,amqp-sac"
)
URLS = {
    "redis": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "nats": os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
    "amqp": os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}
TICK = 0.01


def make(name: str, cfg: Config) -> Mechanism:
    """The mechanism called ``name``."""
    from bench import fleet_proto_mq as mq
    from bench import fleet_proto_nats as nt
    from bench import fleet_proto_redis as rd

    plain = replace(cfg, plain=True)
    table: dict[str, Any] = {
        "stream-today": lambda: rd.StreamToday(cfg),
        "stream-wait": lambda: rd.StreamWait(cfg),
        "stream-wait-fwd": lambda: rd.StreamWait(plain),
        "list-today": lambda: rd.ListToday(cfg),
        "list-wait": lambda: rd.ListWait(cfg),
        "list-wait-fwd": lambda: rd.ListWait(plain),
        "nats-today": lambda: mq.NatsProto(cfg, lease=False),
        "nats-lease": lambda: nt.NatsLease(cfg, keep=False),
        "nats-lease-keep": lambda: nt.NatsLease(cfg, keep=True),
        "nats-lease-v1": lambda: mq.NatsProto(cfg, lease=True),
        "amqp-today": lambda: mq.AmqpProto(cfg, sac=False),
        "amqp-sac": lambda: mq.AmqpProto(cfg, sac=True),
    }
    mechanism: Mechanism = table[name]()
    return mechanism


def worker_entry(name: str, cfg: Config, out: Any, go: Any, stop: Any) -> None:
    """A worker process: wait for ``go``, work until ``stop``, report."""
    asyncio.run(_worker(name, cfg, out, go, stop))


async def _worker(name: str, cfg: Config, out: Any, go: Any, stop: Any) -> None:
    loop = asyncio.get_running_loop()
    mechanism = make(name, cfg)
    report = Report(lambda batch: out.put(("batch", asdict(batch))))
    out.put(("ready", os.getpid()))
    await loop.run_in_executor(None, go.wait)
    task = asyncio.create_task(mechanism.work(report))
    await loop.run_in_executor(None, stop.wait)
    if task.done() and not task.cancelled() and task.exception():
        # a prototype that died is a defect: say so (its figures are void)
        print(f"worker {os.getpid()} failed: {task.exception()!r}", file=sys.stderr)
        out.put(("failed", os.getpid(), repr(task.exception())))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # stopped
        await task
    out.put(("commands", os.getpid(), report.commands))
    await mechanism.close()


class Fleet:
    """N worker processes and what they report (collected on a thread)."""

    def __init__(self, name: str, cfg: Config, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.out: Any = ctx.Queue()
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.procs = [
            ctx.Process(
                target=worker_entry, args=(name, cfg, self.out, self.go, self.stop)
            )
            for _ in range(workers)
        ]
        self.batches: list[Batch] = []
        self.commands: dict[int, list[float]] = {}
        self.ready = 0
        self.received = 0
        self.failures: list[str] = []
        self.killed: int | None = None
        self.killed_at = 0.0
        self._thread = threading.Thread(target=self._collect, daemon=True)

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        self._thread.start()

    def _collect(self) -> None:
        while len(self.commands) < len(self.procs) - (self.killed is not None):
            try:
                kind, *rest = self.out.get(timeout=1)
            except queue.Empty:
                continue
            if kind == "ready":
                self.ready += 1
            elif kind == "failed":
                self.failures.append(rest[1])
            elif kind == "batch":
                batch = Batch(**rest[0])
                self.batches.append(batch)
                self.received += len(batch.sent)
            else:
                self.commands[rest[0]] = rest[1]

    async def until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            if not all(p.is_alive() for p in self.procs if p.pid != self.killed):
                raise RuntimeError(f"a worker died while waiting for {what}")
            await asyncio.sleep(0.05)

    async def kill_after(self, seconds: float) -> None:
        """kill -9 the process that started the latest batch, after ``seconds``."""
        await asyncio.sleep(seconds)
        self.killed = self.batches[-1].pid
        self.killed_at = time.time()
        os.kill(self.killed, signal.SIGKILL)

    def failover(self) -> float:
        """Seconds from the kill to the next batch of another process."""
        after = [b.start for b in self.batches if b.start > self.killed_at]
        return min(after, default=float("nan")) - self.killed_at

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


async def send(mechanism: Mechanism, cfg: Config, rate: float, seconds: float) -> int:
    """Send ``rate`` msg/s for ``seconds``; the number sent."""
    began, count = time.monotonic(), 0
    total = int(rate * seconds)
    while count < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1) - count
        now = time.time()
        await mechanism.send([(now, cfg.key_of(count + i)) for i in range(due)])
        count += due
        await asyncio.sleep(TICK)
    return count


async def measure(name: str, cfg: Config, workers: int, rate: float, args: Any) -> Any:
    """One line: start the fleet, send (or pre-load), wait, sit idle."""
    producer = make(name, cfg)
    await producer.setup()
    fleet = Fleet(name, cfg, workers)
    try:
        fleet.start()
        await fleet.until(lambda: fleet.ready == workers, 120, "workers ready")
        total = 0
        if args.drain:
            for start in range(0, args.drain, 1000):
                chunk = min(1000, args.drain - start)
                sent = [(time.time(), cfg.key_of(start + i)) for i in range(chunk)]
                await producer.send(sent)
            total = args.drain
        began = time.time()
        fleet.go.set()
        if args.kill_after:
            killer = asyncio.create_task(fleet.kill_after(args.kill_after))
        if not args.drain:
            total = await send(producer, cfg, rate, args.duration)
        sent_for = time.time() - began
        if args.kill_after:
            await killer
            await _settle(fleet, total)
        else:
            await fleet.until(lambda: fleet.received >= total, 120, "every batch")
        idle_from = time.time() + 0.5
        await asyncio.sleep(args.idle + 0.5)
        idle_to = time.time()
        fleet.finish()
        alive = workers - (fleet.killed is not None)
        await fleet.until(lambda: len(fleet.commands) == alive, 30, "reports")
    finally:
        fleet.finish()
        await producer.teardown()
        await producer.close()
    window = (began, began + sent_for, idle_from, idle_to)
    figures = (fleet.batches, fleet.commands, cfg, total, window, rate)
    row = summarize(*figures, late_ms=args.slack_ms)
    if fleet.failures:
        raise RuntimeError(f"workers failed: {fleet.failures}")
    if args.kill_after:
        row.update(failover_s=fleet.failover(), extra=fleet.received - total)
    return row


async def _settle(fleet: Fleet, total: int) -> None:
    """After a kill: until every message came back, or 40 s without news."""
    last, quiet = fleet.received, time.monotonic()
    while fleet.received < total and time.monotonic() - quiet < 40:
        await asyncio.sleep(0.2)
        if fleet.received != last:
            last, quiet = fleet.received, time.monotonic()


def parse(argv: list[str]) -> argparse.Namespace:
    return arguments(argv, MECHANISMS, __doc__ or "")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    rows, errors = [], []
    for name in args.mechanisms.split(","):
        rates = [0.0] if args.drain else [float(r) for r in args.rates.split(",")]
        for rate in rates:
            for workers in [int(n) for n in args.workers_list.split(",")]:
                prefix = f"tbproto-{run_id}-{name}-{workers}-{rate:.0f}"
                cfg = Config(
                    prefix, args.batch_size, args.batch_timeout, args.keys, urls=URLS
                )
                try:
                    row = await measure(name, cfg, workers, rate, args)
                except Exception as exc:  # reported; the others go on
                    errors.append(f"{name} N={workers} R={rate:.0f}: {exc!r}")
                    print("FAILED", errors[-1], flush=True)
                    continue
                row.update(mechanism=name, workers=workers)
                rows.append(row)
                print(markdown({"rows": [row], "args": vars(args)}, head=False))
                sys.stdout.flush()
    options = {key: str(value) for key, value in vars(args).items()}
    return {"run_id": run_id, "args": options, "rows": rows, "errors": errors}


def main() -> int:
    args = parse(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    raw = asyncio.run(run(args))
    text = markdown(raw)
    base = args.out / f"fleet-proto-{raw['run_id']}"
    base.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    base.with_suffix(".md").write_text(text + "\n")
    print(f"\n{text}\n\n(written to {base}.md and .json)")
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
