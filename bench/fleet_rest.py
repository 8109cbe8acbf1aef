"""``--idle S`` of ``python -m bench.fleet``: the fleet at rest, and plain tasks.

After the line's load has run (every result in), two phases (issue 18
item 3, "no cost at rest"):

1. **Idle**: nothing is sent for S seconds; the broker commands of the
   fleet's connections are counted by the server (``bench/fleet_counts.py``)
   and divided by the workers: ``idle_cmds`` per second per worker
   (``idle_names``: on Redis, how many of each command in the window),
   and the CPU the workers used meanwhile: ``idle_cpu``, the share of a
   core per worker (a busy loop shows here, not in the commands).
2. **Plain tasks while batches wait**: for ``PLAIN_SECONDS`` the batched
   task gets ``WAITING_RATE`` msg/s, too few to fill a batch before
   ``batch_timeout`` (so batches always wait, in the broker or in the
   workers' buffers), while the plain task ``fleet_plain`` gets
   ``PLAIN_RATE`` msg/s; ``plain_p50_ms`` / ``plain_p99_ms`` /
   ``plain_max_ms``: the plain tasks' send -> start.
"""

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from bench.fleet_app import PLAIN_NAME, FleetApp, item
from bench.fleet_counts import idle_commands
from bench.measure import count_existing, percentile

#: Seconds plain tasks are sent while batches wait.
PLAIN_SECONDS = 2.0
#: Plain tasks per second then.
PLAIN_RATE = 20
#: Batched messages per second then (a batch waits its whole timeout).
WAITING_RATE = 40
#: Seconds between the load's last result and the idle window.
SETTLE = 1.0


async def rest(
    redis: Redis, app: FleetApp, proc: Any, args: Any, kiq: Any
) -> dict[str, Any]:
    """The idle cost and the plain tasks' latency of a running fleet.

    :param proc: the fleet's process group (``bench.procs.Proc``).
    :param args: the command line (``idle``: seconds of rest).
    :param kiq: how the line sends the batched task.
    :return: ``idle_cmds`` (None if not measurable), ``idle_cpu`` and the
        plain figures.
    """
    s = app.settings
    await asyncio.sleep(SETTLE)
    workers = proc.workers()
    pids = [proc.pid, *workers]
    cpu_before, began = proc.cpu_seconds(), time.monotonic()
    total, names = await idle_commands(s.broker, pids, args.idle, s.redis_url)
    cpu = (proc.cpu_seconds() - cpu_before) / (time.monotonic() - began)
    idle = None if total is None else total / max(1, len(workers))
    plain: Any = AsyncKicker(PLAIN_NAME, app.broker, {}).kiq
    plain_ids, batched_ids = await _plain_while_waiting(plain, kiq, s.keys)
    keys = [f"{s.queue}:{task_id}" for task_id in plain_ids + batched_ids]
    deadline = time.monotonic() + 30 + 10 * s.batch_timeout
    while await count_existing(redis, keys) < len(keys):
        if time.monotonic() > deadline or not proc.alive():
            raise TimeoutError("plain tasks or waiting batches did not finish")
        await asyncio.sleep(0.1)
    backend: Any = app.broker.result_backend
    results = await asyncio.gather(*(backend.get_result(i) for i in plain_ids))
    waits = [
        (result.return_value[1] - result.return_value[0]) * 1000
        for result in results
        if not result.is_err
    ]
    return {
        "idle_cmds": idle,
        "idle_cpu": cpu / max(1, len(workers)),
        "idle_names": names,
        **plain_figures(waits),
    }


def plain_figures(waits_ms: list[float]) -> dict[str, float]:
    """p50/p99/max of the plain tasks' waits (none when no plain task ran)."""
    if not waits_ms:
        return {}
    return {
        "plain_n": float(len(waits_ms)),
        "plain_p50_ms": percentile(waits_ms, 0.5),
        "plain_p99_ms": percentile(waits_ms, 0.99),
        "plain_max_ms": max(waits_ms),
    }


async def _plain_while_waiting(
    plain: Any, batched: Any, keys: int
) -> tuple[list[str], list[str]]:
    """Send plain tasks among a trickle of batched messages; both task_ids."""
    plain_ids: list[str] = []
    batched_ids: list[str] = []
    step = 1 / PLAIN_RATE
    per_step = WAITING_RATE // PLAIN_RATE
    for _ in range(int(PLAIN_SECONDS * PLAIN_RATE)):
        now = time.time()
        first = len(batched_ids)
        sent = await asyncio.gather(
            *(batched(item(now, first + i, keys)) for i in range(per_step))
        )
        batched_ids.extend(one.task_id for one in sent)
        plain_ids.append((await plain(time.time())).task_id)
        await asyncio.sleep(step)
    return plain_ids, batched_ids
