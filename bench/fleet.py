"""``python -m bench.fleet``: how well N worker processes batch as one.

For each broker of ``--brokers`` (Redis stream, Redis list, RabbitMQ via
taskiq-aio-pika, NATS JetStream via taskiq-nats's pull broker), each rate R
of ``--rates`` and each N of ``--workers-list``, ONE real ``taskiq worker
bench.fleet_app:broker --workers N`` (log level WARNING, ack when saved)
runs one batched task (``--batch-size``, ``--batch-timeout``) while this
process sends R messages/s for ``--duration`` seconds, each message's item
being its send time. Each message's result (Redis result backend) is
``[send time, its batch's size, batch start, pid]`` (``bench/fleet_app.py``),
from which, once every result is in:

* batches = Σ 1/size over the messages; mean batch = messages / batches;
* ideal = min(batch_size, rate * batch_timeout), with the rate actually
  sent; fill = mean batch / ideal;
* wait = batch start - send time, p50/p99/max in ms, and ``late``: the
  messages whose wait exceeds batch_timeout + ``--slack-ms``;
* worker cpu s = CPU seconds of the fleet's processes from the first send
  to the last result (``/proc``).

``--paths`` runs each line once per path in one run: ``today`` (each worker
reads and buffers, ``BatchingMiddleware(wait_in_broker=False)``), ``wait``
(batches wait in the broker where its transport can, ``wait_in_broker=True``)
and ``wait-plain`` (the same workers, but a plain taskiq kicker sends: the
messages land on the main queue and the workers forward them); the report
then puts fill and p50/p99 send → batch start side by side per broker, rate
and N.

Every run has queue names of its own (``tbbench-fleet-<run>-...``), deleted
after it; the worker's process group is killed after each run, on error
and on Ctrl-C/SIGTERM. Services: ``REDIS_URL``, ``RABBITMQ_URL``,
``NATS_URL`` (see ``bench/brokers.py``); a broker whose server is
unreachable is skipped. Writes ``<out>/fleet-<run id>.md`` and ``.json``
and the workers' logs under ``<out>/<run id>/``.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from bench.brokers import AmqpQueue, NatsConsumer, unreachable
from bench.fleet_app import BROKERS, TASK_NAME, FleetSettings, build
from bench.fleet_report import markdown, row_line, summarize
from bench.measure import count_existing, delete_prefix
from bench.procs import ROOT, started, taskiq_worker_argv

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Seconds between two sends of the producer (each sends what is due).
TICK = 0.01
#: Seconds between two polls for results.
POLL = 0.1
#: The paths ``--paths`` chooses from: ``wait_in_broker`` of each.
#: ``wait-plain``: the workers wait in the broker, the producer is a plain
#: taskiq kicker (no plugin), so the workers forward every message.
PATHS = {"today": False, "wait": True, "wait-plain": True}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--workers-list", default="1,2,4,8", help="e.g. 1,4")
    parser.add_argument("--rates", default="300", help="msg/s, e.g. 300,2000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-timeout", type=float, default=0.5)
    parser.add_argument("--slack-ms", type=float, default=50.0)
    parser.add_argument(
        "--paths",
        default="today,wait",
        help="today (per-worker buffers), wait, wait-plain (wait, sent by a "
        "plain taskiq kicker: the workers forward)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


async def send(kiq: Any, rate: float, duration: float) -> tuple[list[str], float]:
    """Send ``rate`` msg/s for ``duration`` s; the task_ids and the rate sent.

    Every ``TICK`` the messages due by then go out concurrently, so a slow
    broker makes the producer lag (the rate returned is the one achieved).
    """
    ids: list[str] = []
    began = time.monotonic()
    total = int(rate * duration)
    while len(ids) < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1) - len(ids)
        sent = await asyncio.gather(*(kiq(time.time()) for _ in range(due)))
        ids.extend(one.task_id for one in sent)
        await asyncio.sleep(TICK)
    elapsed = time.monotonic() - began
    return ids, len(ids) / max(elapsed, 1e-9)


async def wait_results(
    redis: Redis, keys: list[str], timeout: float, alive: Any
) -> None:
    """Wait until every result key exists; raise on timeout or a dead worker."""
    deadline = time.monotonic() + timeout
    while (found := await count_existing(redis, keys)) < len(keys):
        if not alive():
            raise RuntimeError(f"worker exited; {found} of {len(keys)} results")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{found} of {len(keys)} results in {timeout:.0f} s")
        await asyncio.sleep(POLL)


async def fetch(backend: Any, ids: list[str]) -> tuple[list[list[float]], int]:
    """Every message's record, and how many results were errors."""
    records: list[list[float]] = []
    errors = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        results = await asyncio.gather(*(backend.get_result(i) for i in chunk))
        for result in results:
            if result.is_err:
                errors += 1
            else:
                records.append([float(value) for value in result.return_value])
    return records, errors


async def wait_ready(redis: Redis, s: FleetSettings, workers: int, proc: Any) -> None:
    """Wait until every worker process ran its startup (bounded)."""
    deadline = time.monotonic() + 120
    while int(await redis.get(s.ready_key()) or 0) < workers:
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fleet did not start:\n{proc.output()}")
        await asyncio.sleep(POLL)
    await asyncio.sleep(1.0)  # startup ends just before each process reads


async def measure(
    redis: Redis,
    s: FleetSettings,
    workers: int,
    rate: float,
    args: Any,
    log: Path,
    plain: bool = False,
) -> dict[str, Any]:
    """One fleet: start it, send (``plain``: with taskiq's own kicker), summarize."""
    app = build(s)
    kiq = AsyncKicker(TASK_NAME, app.broker, {}).kiq if plain else app.task.kiq
    argv = taskiq_worker_argv("bench.fleet_app:broker", workers)
    with started(argv, s.to_env(), log, f"{s.broker}-{workers}") as proc:
        await wait_ready(redis, s, workers, proc)
        await app.broker.startup()
        try:
            cpu_before = proc.cpu_seconds()
            ids, sent_rate = await send(kiq, rate, args.duration)
            keys = [f"{s.queue}:{task_id}" for task_id in ids]
            timeout = 60 + 10 * s.batch_timeout
            await wait_results(redis, keys, timeout, proc.alive)
            cpu_seconds = proc.cpu_seconds() - cpu_before
            records, errors = await fetch(app.broker.result_backend, ids)
        finally:
            await app.broker.shutdown()
    slack = args.slack_ms / 1000
    figures = summarize(records, s.batch_size, s.batch_timeout, sent_rate, slack)
    return {
        **figures,
        "rate": rate,
        "sent_rate": sent_rate,
        "errors": errors,
        "cpu_s": cpu_seconds,
    }


async def cleanup(redis: Redis, s: FleetSettings) -> None:
    """Delete the run's Redis keys, RabbitMQ queue or NATS stream."""
    await delete_prefix(redis, s.queue)
    if s.broker == "amqp":
        from taskiq_batching.transports.amqp_batches import batch_queue_name

        # Where batches waited (wait_in_broker): the task's own queue.
        queue = AmqpQueue(s.queue, [batch_queue_name(s.queue, TASK_NAME)])
        await queue.open()
        await queue.close()
    elif s.broker == "nats":
        for stream in (s.queue, f"{s.queue}-batch"):  # where batches waited
            consumer = NatsConsumer(stream)
            await consumer.open()
            await consumer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    async with Redis.from_url(url) as redis:
        await redis.ping()
        for broker in args.brokers.split(","):
            why = unreachable(broker) if broker in ("amqp", "nats") else None
            if why:
                errors.append(f"{broker} skipped: {why}")
                continue
            for rate in [float(r) for r in args.rates.split(",")]:
                for workers in [int(n) for n in args.workers_list.split(",")]:
                    for path in args.paths.split(","):
                        line = (broker, rate, workers, path)
                        row = await _line(redis, url, run_id, line, args, errors)
                        if row is not None:
                            rows.append(row)
    return {"run_id": run_id, "meta": _meta(args), "rows": rows, "errors": errors}


async def _line(
    redis: Redis,
    url: str,
    run_id: str,
    line: tuple[str, float, int, str],
    args: argparse.Namespace,
    errors: list[str],
) -> dict[str, Any] | None:
    """One broker, rate, N and path; None (and an error noted) if it failed."""
    broker, rate, workers, path = line
    name = f"{broker}-n{workers}-r{rate:.0f}-{path}"
    queue = f"tbbench-fleet-{run_id}-{name}"
    s = FleetSettings(
        url, queue, broker, args.batch_size, args.batch_timeout, PATHS[path]
    )
    _log(f"{name} ...")
    try:
        log = args.out / run_id / f"{name}.log"
        plain = path == "wait-plain"
        row = await measure(redis, s, workers, rate, args, log, plain)
    except Exception as exc:  # reported, the others go on
        errors.append(f"{name}: {exc!r}")
        _log(f"  FAILED: {exc!r}")
        return None
    finally:
        await cleanup(redis, s)
    result = {"broker": broker, "workers": workers, "path": path, **row}
    _log("  " + row_line(result))
    return result


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    try:
        code = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        code = "unknown"
    options = {key: str(value) for key, value in vars(args).items()}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "code": os.environ.get("BENCH_CODE_VERSION", code),
        "options": options,
    }


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `finally`: the fleet is killed


def main() -> int:
    args = parse(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        raw = asyncio.run(run(args))
    except KeyboardInterrupt:  # every fleet and queue is gone by now
        print("interrupted", file=sys.stderr)
        return 130
    text = markdown(raw)
    base = args.out / f"fleet-{raw['run_id']}"
    base.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    base.with_suffix(".md").write_text(text + "\n")
    print()
    print(text)
    print(f"\n(written to {base}.md and .json)")
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
