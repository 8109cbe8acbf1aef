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

Issue 18 items 3 and 4 (``bench/fleet_run.py``, ``bench/fleet_rest.py``):
``--drain M`` pre-loads M messages before the fleet starts (the rate shown
is then the drain's, and the report puts both paths' drain rates and their
ratio side by side); ``--batch-delay D`` makes each batch await D
seconds (an I/O-bound task, a bulk insert's round trip); ``--idle S``
then lets the fleet rest S seconds,
counting its broker commands per second per worker on the server
(``bench/fleet_counts.py``), and sends plain tasks while batches wait
(their send -> start); ``--keys K`` spreads the items over K keys
(``batch_key``) and reports each key's fill against its own ideal, the
worst and the mean (``bench/fleet_keys.py``); ``--max-keys`` sets
``batch_max_keys``.

``--repeat K`` runs every line's paths K times, in alternating order, and
the report gives each drain's median wait / today over the K pairs (the
machines are noisy: one pair is not a measurement). ``--cpu-cap`` runs
the worker processes in a cgroup of 0.5 core each (root; ``bench/cgroups.py``),
so that Redis and this process keep spare cores, as where Redis has a
machine of its own. ``--paths`` runs each
line once per path in one run: ``today`` (each worker
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
import json
import os
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import cgroups
from bench.brokers import AmqpQueue, NatsConsumer, unreachable
from bench.fleet_app import BROKERS, TASK_NAME, FleetSettings
from bench.fleet_report import markdown, row_line
from bench.fleet_run import measure
from bench.measure import delete_prefix
from bench.procs import ROOT, interruptible

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every line's paths K times, in alternating order; the "
        "report gives each drain's median wait / today over the pairs",
    )
    parser.add_argument(
        "--drain",
        type=int,
        default=0,
        help="pre-load M messages before the fleet starts (--rates unused); "
        "the rate shown is the drain's: messages / (last - first batch start)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="then rest S seconds (broker commands counted by the server), "
        "then send plain tasks while batches wait",
    )
    parser.add_argument("--keys", type=int, default=0, help="batch_key over K keys")
    parser.add_argument("--max-keys", type=int, default=0, help="batch_max_keys")
    parser.add_argument(
        "--batch-concurrency", type=int, default=0, help="batch_concurrency"
    )
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="seconds each batch awaits (I/O-bound tasks)",
    )
    parser.add_argument(
        "--cpu-cap",
        action="store_true",
        help="run the worker processes in a cgroup of 0.5 core each (root), "
        "so that Redis and this process keep spare cores (bench/cgroups.py)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


async def cleanup(redis: Redis, s: FleetSettings) -> None:
    """Delete the run's Redis keys, RabbitMQ queue or NATS stream."""
    await delete_prefix(redis, s.queue)
    # Where a task's batches waited (wait_in_broker): its names carry the
    # queue in a hash tag, ``{<queue>:<task>}:...``; the wake stream
    # stays when the rest is gone.
    await delete_prefix(redis, "{" + s.queue + ":")
    if s.broker == "amqp":
        from taskiq_batching.transports.amqp_queues import batch_queue_name

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
            rates = [0.0] if args.drain else [float(r) for r in args.rates.split(",")]
            for rate in rates:
                for workers in [int(n) for n in args.workers_list.split(",")]:
                    for round_, path in _rounds(args):
                        line = (broker, rate, workers, path, round_)
                        row = await _line(redis, url, run_id, line, args, errors)
                        if row is not None:
                            rows.append({**row, "round": round_})
    return {"run_id": run_id, "meta": _meta(args), "rows": rows, "errors": errors}


def _rounds(args: argparse.Namespace) -> list[tuple[int, str]]:
    """Each round of ``--repeat`` runs every path, in alternating order:
    what drifts during a run (another process, the server's memory) then
    weighs on both paths alike."""
    paths = args.paths.split(",")
    return [
        (round_, path)
        for round_ in range(args.repeat)
        for path in (paths if round_ % 2 == 0 else paths[::-1])
    ]


async def _line(
    redis: Redis,
    url: str,
    run_id: str,
    line: tuple[str, float, int, str, int],
    args: argparse.Namespace,
    errors: list[str],
) -> dict[str, Any] | None:
    """One broker, rate, N and path; None (and an error noted) if it failed."""
    broker, rate, workers, path, round_ = line
    name = f"{broker}-n{workers}-r{rate:.0f}-{path}"
    if args.repeat > 1:
        name += f"-{round_}"
    queue = f"tbbench-fleet-{run_id}-{name}"
    s = FleetSettings(
        url,
        queue,
        broker,
        args.batch_size,
        args.batch_timeout,
        PATHS[path],
        args.keys,
        args.max_keys,
        args.batch_concurrency,
        args.batch_delay,
    )
    _log(f"{name} ...")
    try:
        log = args.out / run_id / f"{name}.log"
        plain = path == "wait-plain"
        row = await measure(redis, s, workers, rate, args, log, plain)
    except Exception as exc:  # reported, the others go on
        # A wrapped error (SendTaskError) says little without its cause.
        cause = f" from {exc.__cause__!r}" if exc.__cause__ else ""
        errors.append(f"{name}: {exc!r}{cause}")
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _log(f"  FAILED: {exc!r}{cause} at {where.filename}:{where.lineno}")
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


def main() -> int:
    args = parse(sys.argv[1:])
    if args.cpu_cap and (reason := cgroups.unavailable()):
        print(f"--cpu-cap: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    raw = interruptible(run(args))
    if raw is None:
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
    sys.exit(main())
