"""What the fault tests observe: records in Redis, results, broker state, logs."""

import asyncio
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncTaskiqTask, TaskiqResult
from taskiq.exceptions import ResultGetError, ResultIsReadyError
from taskiq.kicker import AsyncKicker

from tests.integration.workers import Worker, eventually

#: Messages sent at once by ``send``.
SEND_CHUNK = 200


async def send(
    broker: AsyncBroker,
    task_name: str,
    items: Sequence[Any],
    *args: Any,
    ordered: bool = False,
    **kwargs: Any,
) -> list[AsyncTaskiqTask[Any]]:
    """``kiq(item, *args, **kwargs)`` of each item, ``SEND_CHUNK`` at a time.

    Only taskiq's own ``kiq``: the producer side never depends on the
    version of the package under test. ``ordered``: one at a time, so that
    the broker holds them in this order.
    """
    kicker: AsyncKicker[Any, Any] = AsyncKicker(task_name, broker, {})
    sent: list[AsyncTaskiqTask[Any]] = []
    if ordered:
        return [await kicker.kiq(item, *args, **kwargs) for item in items]
    for start in range(0, len(items), SEND_CHUNK):
        chunk = items[start : start + SEND_CHUNK]
        sent.extend(
            await asyncio.gather(*(kicker.kiq(item, *args, **kwargs) for item in chunk))
        )
    return sent


async def results(
    sent: Sequence[AsyncTaskiqTask[Any]], timeout: float, what: str = ""
) -> list[TaskiqResult[Any]]:
    """Every message's result, all within one deadline.

    Polls each task_id; a poll that fails (the producer's pooled connection
    died with a restarted Redis) is tried again.
    """
    deadline = time.monotonic() + timeout
    got: list[TaskiqResult[Any]] = []
    for task in sent:
        error: BaseException | None = None
        while True:
            try:
                if await task.is_ready():
                    got.append(await task.get_result())
                    break
            except (ResultIsReadyError, ResultGetError) as exc:
                error = exc
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}: no result for {task.task_id} within {timeout} s "
                    f"({len(got)}/{len(sent)} came; last error: {error!r})"
                )
            await asyncio.sleep(0.05)
    return got


async def ready(sent: Sequence[AsyncTaskiqTask[Any]]) -> int:
    """How many of these messages have a result."""
    count = 0
    for start in range(0, len(sent), SEND_CHUNK):
        chunk = sent[start : start + SEND_CHUNK]
        count += sum(await asyncio.gather(*(task.is_ready() for task in chunk)))
    return count


async def batches(redis: Redis, queue: str, task: str | None = None) -> list[Any]:
    """The batch records the worker wrote (see ``app.py``), oldest first."""
    records = [json.loads(raw) for raw in await redis.lrange(f"{queue}:batches", 0, -1)]
    return [r for r in records if task is None or r["task"] == task]


async def counts(redis: Redis, queue: str) -> tuple[int, int]:
    """``collect``'s (distinct items processed, processings in all)."""
    distinct = await redis.scard(f"{queue}:items")
    total = int(await redis.get(f"{queue}:processed") or 0)
    return distinct, total


async def started(redis: Redis, queue: str, task: str) -> int:
    """Items whose batch of ``task`` started (plain tasks: runs)."""
    return int(await redis.hget(f"{queue}:started", task) or 0)


async def pending(redis: Redis, queue: str, group: str = "taskiq") -> int:
    """Entries of a stream's group delivered and not acked."""
    return int((await redis.xpending(queue, group))["pending"])


def processed_items(records: list[dict[str, Any]]) -> Counter[Any]:
    """How many times each item was in a batch."""
    return Counter(item for record in records for item in record["items"])


async def wait(
    what: str,
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    worker: Worker | None = None,
) -> float:
    """Wait until ``check`` holds; fail with the worker's log; return seconds."""
    began = time.monotonic()
    try:
        await eventually(check, timeout, what)
    except pytest.fail.Exception:
        log = "" if worker is None else f"\n--- worker log ---\n{worker.output()}"
        pytest.fail(f"{what}: not within {timeout} s{log}")
    return time.monotonic() - began


#: A log line of taskiq's worker: ``[time][logger][LEVEL][process] message``.
_LINE = re.compile(r"^\[[^\]]*\]\[(?P<logger>[^\]]*)\]\[(?P<level>[A-Z]+) *\]")


def log_lines(
    worker: Worker, levels: Sequence[str] = ("WARNING", "ERROR", "CRITICAL")
) -> list[str]:
    """The worker's log lines of these levels (with the lines that follow them)."""
    found: list[str] = []
    current: list[str] | None = None
    for line in worker.log.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match:
            if current is not None:
                found.append("\n".join(current))
            current = [line] if match["level"] in levels else None
        elif current is not None:
            current.append(line)
    if current is not None:
        found.append("\n".join(current))
    return found


async def pgids(redis: Redis, queue: str) -> set[int]:
    """The worker process groups (``Worker.process.pid``) that ran batches."""
    return {record["pgid"] for record in await batches(redis, queue, "collect")}


def began(record: dict[str, Any]) -> float:
    """When a batch's call began."""
    return float(record["began"])


def longest_gap(records: list[dict[str, Any]], since: float, until: float) -> float:
    """The longest time between two batch starts (or the window's ends)."""
    times = sorted(began(r) for r in records if since <= began(r) <= until)
    edges = [since, *times, until]
    return float(max(later - earlier for earlier, later in itertools.pairwise(edges)))


def handover(records: list[dict[str, Any]], leaver: Worker, at: float) -> float:
    """Seconds from ``at`` to the next batch started by another worker."""
    later = [
        began(r) for r in records if r["pgid"] != leaver.process.pid and began(r) >= at
    ]
    return min(later) - at if later else float("inf")


async def latest(redis: Redis, queue: str, workers: list[Worker]) -> Worker:
    """Of ``workers``, the one that started the latest batch."""
    by_pgid = {worker.process.pid: worker for worker in workers}
    records = [
        r for r in await batches(redis, queue, "collect") if r["pgid"] in by_pgid
    ]
    return by_pgid[max(records, key=began)["pgid"]]
