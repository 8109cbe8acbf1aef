"""Observing a queue drain from the outside: polls, pre-loading, cleanup.

The benchmark process never asks a worker how it is doing: it polls Redis
(and PostgreSQL) every ``POLL`` seconds and timestamps what it sees.

* Stream (``RedisStreamBroker``, and the transport-limit consumer):
  ``XINFO GROUPS`` gives the group's ``entries-read`` and ``pending``;
  taken = entries-read, done = entries-read - pending (acked).
* List (``ListQueueBroker``, no acks): taken = N - LLEN; done = number of
  result keys that exist (one ``EXISTS k1 .. kN``; only polled once the
  list is empty, so it costs Redis nothing while the worker drains).
* Celery (kombu's Redis transport, late acks): taken = N - LLEN;
  done = N - LLEN - HLEN(unacked), seen twice in a row (a message is in
  neither for an instant between BRPOP and the unacked HSET).

A drain's time runs from the first poll that sees anything taken to the
first poll that sees all N done; rate = N / time. The same run also gives
the time from the first poll that sees anything done (first ack/result).
"""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

#: Seconds between two polls of a drain.
POLL = 0.005
GROUP = "taskiq"


class BenchError(Exception):
    """A workload could not be measured (timeout, dead worker, lost items)."""


@dataclass
class Progress:
    taken: int
    done: int


@dataclass
class DrainTiming:
    total: int
    seconds: float
    rate: float
    #: From the first poll that saw a message done (ack or result).
    rate_from_first_done: float


ProgressProbe = Callable[[], Awaitable[Progress]]


async def watch_drain(
    probe: ProgressProbe,
    total: int,
    timeout: float,
    alive: Callable[[], bool],
    start_timeout: float = 60.0,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> DrainTiming:
    """Poll ``probe`` until all ``total`` messages are done.

    ``on_start`` is awaited once, at the first poll that sees a message taken.

    :raises BenchError: when the worker dies, or nothing starts within
        ``start_timeout`` seconds, or the drain exceeds ``timeout``.
    """
    began = time.monotonic()
    first_taken: float | None = None
    first_done: tuple[float, int] | None = None
    while True:
        progress = await probe()
        now = time.monotonic()
        if first_taken is None and progress.taken > 0:
            first_taken = now
            if on_start is not None:
                await on_start()
        if first_done is None and progress.done > 0:
            first_done = (now, progress.done)
        if progress.done >= total and first_taken is not None:
            break
        if not alive():
            raise BenchError("the worker process exited during the drain")
        if first_taken is None and now - began > start_timeout:
            raise BenchError(f"the worker took nothing within {start_timeout:g} s")
        if first_taken is not None and now - first_taken > timeout:
            raise BenchError(
                f"drain not finished within {timeout:g} s "
                f"({progress.done}/{total} done)"
            )
        await asyncio.sleep(POLL)
    seconds = max(now - first_taken, POLL)
    assert first_done is not None
    done_seconds = max(now - first_done[0], POLL)
    return DrainTiming(
        total=total,
        seconds=seconds,
        rate=total / seconds,
        rate_from_first_done=(total - first_done[1]) / done_seconds,
    )


async def redis_cpu_seconds(redis: Redis) -> float:
    """CPU time the Redis server has used so far (``INFO cpu``)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def stream_probe(redis: Redis, queue: str) -> ProgressProbe:
    async def probe() -> Progress:
        for group in await redis.xinfo_groups(queue):
            name = group["name"]
            if name in (GROUP, GROUP.encode()):
                read = int(group.get("entries-read") or 0)
                return Progress(taken=read, done=read - int(group["pending"]))
        return Progress(0, 0)

    return probe


def list_probe(
    redis: Redis, queue: str, total: int, result_keys: Sequence[str]
) -> ProgressProbe:
    async def probe() -> Progress:
        left = int(await redis.llen(queue))
        done = 0
        if left == 0:
            done = int(await redis.exists(*result_keys))
        return Progress(taken=total - left, done=done)

    return probe


def celery_probe(
    redis: Redis, queue_key: str, unacked_key: str, total: int
) -> ProgressProbe:
    settled = False

    async def probe() -> Progress:
        nonlocal settled
        pipe = redis.pipeline(transaction=True)
        pipe.llen(queue_key)
        pipe.hlen(unacked_key)
        left, unacked = (int(value) for value in await pipe.execute())
        done = total - left - unacked
        if done >= total and not settled:
            settled = True  # see it twice before believing it
            done = total - 1
        elif done < total:
            settled = False
        return Progress(taken=total - left, done=done)

    return probe


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str
) -> None:
    """Poll ``check`` every 20 ms; raise ``BenchError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def delete_prefix(redis: Redis, prefix: str) -> int:
    """UNLINK every key starting with ``prefix``; return how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=_glob_escape(prefix) + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += int(await redis.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await redis.unlink(*batch))
    return deleted


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


async def create_group(redis: Redis, queue: str) -> None:
    """Create the taskiq consumer group from the stream's start (id 0).

    taskiq-redis creates it from ``$`` (new entries only) at startup, which
    would skip a pre-loaded queue; created first, the worker reuses it.
    """
    await redis.xgroup_create(queue, GROUP, id="0", mkstream=True)


async def preload(
    redis: Redis, queue: str, kind: str, payloads: Sequence[bytes]
) -> None:
    """Put messages on a stream (XADD) or list (LPUSH), 1,000 per round trip."""
    for start in range(0, len(payloads), 1000):
        pipe = redis.pipeline(transaction=False)
        for payload in payloads[start : start + 1000]:
            if kind == "stream":
                pipe.xadd(queue, {b"data": payload})
            else:
                pipe.lpush(queue, payload)
        await pipe.execute()


async def count_existing(redis: Redis, keys: Sequence[str]) -> int:
    found = 0
    for start in range(0, len(keys), 10_000):
        found += int(await redis.exists(*keys[start : start + 10_000]))
    return found


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
