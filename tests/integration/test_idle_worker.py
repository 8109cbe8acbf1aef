"""A real ``taskiq worker`` with nothing to do costs next to no CPU.

Found in a bench: an idle worker's pump went round the event loop on
every turn (a cancelled future beside its read), using about 40% of a
core and a waiter per turn until it held gigabytes. Nothing else shows
it: every message is still batched and run.
"""

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from taskiq.kicker import AsyncKicker

from tests.integration.worker_app import make_broker
from tests.integration.workers import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Seconds the idle worker is watched.
WATCH = 2.0
#: CPU seconds it may use meanwhile (its reads block 0.5 s each: ~0.01 s).
MOST_CPU = 0.2


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the worker child)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = f"/proc/{pid}/task/{pid}/children"
    with open(children, encoding="ascii") as found:
        pids += [int(child) for child in found.read().split()]
    for one in pids:
        with open(f"/proc/{one}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


@pytest.mark.parametrize("kind", ["stream", "list"])
async def test_an_idle_worker_uses_next_to_no_cpu(
    redis_url: str, queue: str, start_worker: Callable[..., Worker], kind: str
) -> None:
    producer = make_broker(redis_url, kind, queue, "json")
    await producer.startup()
    worker = start_worker(kind, "json", batch_size=100, batch_timeout=0.2)
    collect: AsyncKicker[Any, Any] = AsyncKicker("collect", producer, {})
    # One batch run: the worker is up and has been through a batch.
    sent = await collect.kiq(1)
    result = await sent.wait_result(timeout=60, check_interval=0.05)
    assert not result.is_err, result.error
    before = cpu_seconds(worker.process.pid)
    await asyncio.sleep(WATCH)  # the window measured, not a barrier
    used = cpu_seconds(worker.process.pid) - before
    assert used < MOST_CPU, (used, worker.output())
    await producer.shutdown()
