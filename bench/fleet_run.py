"""One line of ``python -m bench.fleet``: start a fleet, load it, collect results.

The load is either a steady rate (``send``) or, with ``--drain M``, M
messages pre-loaded where the path's producer puts them before any worker
starts (``preload``): the rate is then the drain's, messages / (last - first
batch start), and the ideal batch is ``batch_size``. With ``--idle S`` the
fleet then rests S seconds, its broker commands counted, and a plain task
shares the broker with waiting batches (``bench/fleet_rest.py``).
"""

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from bench import cgroups
from bench.fleet_app import TASK_NAME, FleetApp, FleetSettings, build, item
from bench.fleet_keys import key_figures
from bench.fleet_report import summarize
from bench.fleet_rest import rest
from bench.measure import count_existing
from bench.procs import machine_busy, machine_ticks, started, taskiq_worker_argv

#: Seconds between two sends of the producer (each sends what is due).
TICK = 0.01
#: Seconds between two polls for results.
POLL = 0.1
#: Result keys checked per round trip while waiting (``wait_results``).
RESULT_CHUNK = 1000
#: Messages pre-loaded at once (``--drain``).
PRELOAD_CHUNK = 1000


async def send(
    kiq: Any, rate: float, duration: float, keys: int = 0
) -> tuple[list[str], float]:
    """Send ``rate`` msg/s for ``duration`` s; the task_ids and the rate sent.

    Every ``TICK`` the messages due by then go out concurrently, so a slow
    broker makes the producer lag (the rate returned is the one achieved).

    :param keys: keys the items spread over, round robin (0: no key).
    """
    ids: list[str] = []
    began = time.monotonic()
    total = int(rate * duration)
    while len(ids) < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1) - len(ids)
        now, first = time.time(), len(ids)
        sent = await asyncio.gather(
            *(kiq(item(now, first + index, keys)) for index in range(due))
        )
        ids.extend(one.task_id for one in sent)
        await asyncio.sleep(TICK)
    elapsed = time.monotonic() - began
    return ids, len(ids) / max(elapsed, 1e-9)


async def preload(kiq: Any, count: int, keys: int) -> list[str]:
    """Send ``count`` messages at once (in chunks); their task_ids."""
    ids: list[str] = []
    for first in range(0, count, PRELOAD_CHUNK):
        now = time.time()
        chunk = range(first, min(count, first + PRELOAD_CHUNK))
        sent = await asyncio.gather(*(kiq(item(now, i, keys)) for i in chunk))
        ids.extend(one.task_id for one in sent)
    return ids


async def wait_results(
    redis: Redis, keys: list[str], timeout: float, alive: Callable[[], bool]
) -> None:
    """Wait until every result key exists; raise on timeout or a dead worker.

    Keys are checked oldest first, ``RESULT_CHUNK`` at a time, and a poll
    stops at the first chunk with a result missing; the chunks before it
    are never checked again. The poller's work over a run is then about
    one key per message (and a chunk per poll), not one per message per
    poll: checking every key each ``POLL`` took the producer about a core
    on a 150,000-message drain, which the workers' paths paid for at
    random.
    """
    deadline = time.monotonic() + timeout
    waiting = list(keys)
    while waiting:
        waiting = await still_missing(redis, waiting)
        if not waiting:
            return
        if not alive():
            found = await count_existing(redis, keys)
            raise RuntimeError(f"worker exited; {found} of {len(keys)} results")
        if time.monotonic() > deadline:
            found = await count_existing(redis, keys)
            raise TimeoutError(f"{found} of {len(keys)} results in {timeout:.0f} s")
        await asyncio.sleep(POLL)


async def still_missing(redis: Redis, waiting: list[str]) -> list[str]:
    """``waiting`` from its first chunk that lacks a result (one ``EXISTS`` each)."""
    for start in range(0, len(waiting), RESULT_CHUNK):
        chunk = waiting[start : start + RESULT_CHUNK]
        if int(await redis.exists(*chunk)) < len(chunk):
            return waiting[start:]
    return []


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
    """One fleet: start it, load it (``plain``: with taskiq's own kicker), summarize."""
    app = build(s)
    argv = taskiq_worker_argv("bench.fleet_app:broker", workers)
    line = (workers, rate, getattr(args, "drain", 0))
    with contextlib.ExitStack() as stack:
        if getattr(args, "cpu_cap", False):
            # The worker processes share 0.5 core each; Redis and this
            # process keep the rest of the machine.
            budget = stack.enter_context(
                cgroups.cpu_budget(cgroups.CPU_CAP_PER_WORKER * workers)
            )
            argv = cgroups.inside(budget, argv)
        return await _measure(redis, app, line, argv, args, log, plain)


async def _measure(
    redis: Redis,
    app: FleetApp,
    line: tuple[int, float, int],
    argv: list[str],
    args: Any,
    log: Path,
    plain: bool,
) -> dict[str, Any]:
    s = app.settings
    workers, rate, drain = line
    kiq = AsyncKicker(TASK_NAME, app.broker, {}).kiq if plain else app.task.kiq
    await app.broker.startup()
    try:
        began = time.monotonic()
        ids = await preload(kiq, drain, s.keys) if drain else []
        if drain:
            # The producer's side (RabbitMQ: into a full task queue, a kick
            # after a refused publish now and then; docs/fleet.md).
            sent = drain / max(time.monotonic() - began, 1e-9)
            print(f"  preload: {sent:,.0f} msg/s sent", flush=True)
        with started(argv, s.to_env(), log, f"{s.broker}-{workers}") as proc:
            await wait_ready(redis, s, workers, proc)
            # A drain starts with the workers, before they all said ready:
            # its CPU counts from their start (imports and startup included).
            cpu_before = 0.0 if drain else proc.cpu_seconds()
            # The whole machine's share busy and this producer's CPU over the
            # same window: a saturated machine delays every path alike.
            ticks, producer_before = machine_ticks(), time.process_time()
            if not drain:
                ids, sent_rate = await send(kiq, rate, args.duration, s.keys)
            keys = [f"{s.queue}:{task_id}" for task_id in ids]
            timeout = 60 + 10 * s.batch_timeout + drain / 500
            await wait_results(redis, keys, timeout, proc.alive)
            cpu_seconds = proc.cpu_seconds() - cpu_before
            busy = machine_busy(ticks, machine_ticks())
            producer_cpu = time.process_time() - producer_before
            records, errors = await fetch(app.broker.result_backend, ids)
            rested = await rest(redis, app, proc, args, kiq) if args.idle else {}
    finally:
        await app.broker.shutdown()
    if drain:
        starts = [record[2] for record in records]
        # The rate asked stays 0 (the line's key in the report); the rate
        # "sent" is the drain's.
        sent_rate = len(records) / max(max(starts) - min(starts), 1e-9)
    ideal_rate = math.inf if drain else sent_rate
    slack = args.slack_ms / 1000
    figures = summarize(records, s.batch_size, s.batch_timeout, ideal_rate, slack)
    keyed = key_figures(records, s.batch_size, s.batch_timeout, ideal_rate)
    return {
        **figures,
        **keyed,
        **rested,
        "rate": rate,
        "sent_rate": sent_rate,
        "errors": errors,
        "cpu_s": cpu_seconds,
        "busy": busy,
        "producer_cpu_s": producer_cpu,
        "drain": drain,
    }
