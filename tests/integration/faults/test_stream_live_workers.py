"""At-least-once between live workers of one Redis stream (issue 18, item 5).

Several worker processes share a stream's consumer group. Each holds
entries for a while (buffered, parked behind a running batch, running):
a live worker's held entries are never claimed and run by its sibling,
a dead one's are taken over within a bounded time, and processes given
the same ``consumer_name`` never run each other's messages.

Batches of 2 items that take 1 s each, one at a time per process
(``batch_concurrency`` 1): a worker that reads 16 items holds the last
ones for 7 s, far longer than the broker's ``idle_timeout`` of 2 s. A
worker without the fix claimed its own idle entries back in its sweeps
(each time its pump read), so only a sibling sweeping first ran them
twice: the first test keeps the holder's pump from reading (its
Receiver's only slot busy), as a worker busy with plain tasks is.
Prints what it measured (``-s``).
"""

import asyncio
import time
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import (
    batches,
    counts,
    pending,
    processed_items,
    send,
    started,
    wait,
)
from tests.integration.workers import Worker

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(120)]

IDLE_MS = 2000
#: The transport's sweep (and refresh) interval for IDLE_MS: idle_timeout / 2.
INTERVAL = IDLE_MS / 2000
#: What a busy, shared machine may add to a bound measured in seconds.
SLACK = 5.0


def stream_config(redis_url: str, **more: str) -> dict[str, str]:
    """Batches of 2 that take 1 s; ``idle_timeout`` 2 s."""
    return {
        "TB_BROKER": "stream",
        "REDIS_URL": redis_url,
        "TB_BATCH_SIZE": "2",
        "TB_BATCH_TIMEOUT": "0.2",
        "TB_BATCH_DELAY": "1",
        "TB_IDLE_MS": str(IDLE_MS),
        **more,
    }


async def runs(redis: Redis, queue: str) -> Counter[int]:
    """How many times each item was in a batch of ``collect`` that finished."""
    return processed_items(await batches(redis, queue, "collect"))


class Done:
    """Every item processed, and nothing left in the stream (lag, pending)."""

    def __init__(self, redis: Redis, queue: str, items: int) -> None:
        self.redis = redis
        self.queue = queue
        self.items = items

    async def __call__(self) -> bool:
        if (await counts(self.redis, self.queue))[0] < self.items:
            return False
        (group,) = await self.redis.xinfo_groups(self.queue)
        return int(group["lag"]) == 0 and await pending(self.redis, self.queue) == 0


async def claims_during(redis: Redis, queue: str, holder: str, seconds: float) -> int:
    """Entries other consumers than ``holder`` take, watched for ``seconds``.

    An observation window, not a barrier: it ends early when one is taken.
    """
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        consumers = await redis.xinfo_consumers(queue, "taskiq")
        taken = sum(int(c["pending"]) for c in consumers if c["name"] != holder)
        if taken:
            return taken
        await asyncio.sleep(0.05)
    return 0


def twice(counted: Counter[int]) -> int:
    """Items that ran more than once."""
    return sum(1 for times in counted.values() if times > 1)


async def test_a_live_workers_held_entries_are_not_run_by_its_sibling(
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """``taskiq worker --workers 2 --max-async-tasks 1``: a plain task of 5 s
    and 16 items, read at once by one process. Its Receiver runs the plain
    task (its only slot busy, so it pulls nothing for 5 s) while it batches
    the items in batches of 0.5 s, holding the last ones for 3.5 s; its
    sibling sweeps for entries idle over 2 s all along. Every item runs
    exactly once, and the plain task once."""
    config = stream_config(redis_url, TB_PLAIN_DELAY="5", TB_BATCH_DELAY="0.5")
    broker = await producer(config)
    await send(broker, "slow_plain", [0])
    await send(broker, "collect", list(range(16)))  # all there for one read
    worker = start_worker(config, args=("--workers", "2", "--max-async-tasks", "1"))

    async def plain_ran() -> bool:
        return int(await redis.get(f"{queue}:plain_runs") or 0) > 0

    await wait("the plain task started", plain_ran, 30, worker)
    took = await wait("all 16 processed", Done(redis, queue, 16), 60, worker)
    worker.stop(30)  # every run it began has now recorded itself
    counted = await runs(redis, queue)
    plain = int(await redis.get(f"{queue}:plain_runs") or 0)
    print(
        f"\n--workers 2, idle_timeout {IDLE_MS} ms, 16 items held up to ~3.5 s "
        f"and a plain task of 5 s: {len(counted)}/16 ran, {twice(counted)} more "
        f"than once ({sum(counted.values())} runs); the plain task ran {plain} "
        f"time(s); all done {took:.1f} s after it started"
    )
    assert sorted(counted) == list(range(16))
    assert twice(counted) == 0, counted
    assert plain == 1
    assert worker.crashes() == 0, worker.output()


async def test_a_killed_workers_held_entries_are_taken_over_in_bounded_time(
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """A worker holds 30 items (one batch of 2 running, the rest parked) and
    a plain task of 30 s (its Receiver's only slot) while a sibling runs:
    the sibling claims none of them while it lives. Then it is killed with
    SIGKILL: the sibling takes its entries over within ``idle_timeout`` plus
    one sweep interval (plus slack), and every item is processed; only the
    batch cut by the kill may run twice."""
    config = stream_config(redis_url, TB_PLAIN_DELAY="30")
    broker = await producer(config)
    await send(broker, "slow_plain", [0])
    await send(broker, "collect", list(range(30)))  # all there for one read
    victim = start_worker(config, args=("--max-async-tasks", "1"))

    async def victim_holds() -> bool:
        consumers = await redis.xinfo_consumers(queue, "taskiq")
        return sum(int(c["pending"]) for c in consumers) > 0

    await wait("the victim holding entries", victim_holds, 30, victim)
    (held_by,) = await redis.xinfo_consumers(queue, "taskiq")
    # Its batches take no time: how fast it runs what it took over proves
    # nothing here (what it claims, and when, does).
    survivor = start_worker({**config, "TB_PLAIN_DELAY": "0", "TB_BATCH_DELAY": "0"})
    # A consumer is listed once it was served: the survivor reads a plain
    # message (the victim's Receiver, busy, pulls nothing) and acks it.
    await send(broker, "echo", [1])

    async def survivor_reads() -> bool:
        consumers = await redis.xinfo_consumers(queue, "taskiq")
        others = [c for c in consumers if c["name"] != held_by["name"]]
        return len(others) == 1 and int(others[0]["pending"]) == 0

    await wait("the survivor reading", survivor_reads, 30, survivor)
    # Both alive for longer than idle_timeout plus two sweep intervals: a
    # sibling that claims live entries would by then.
    claimed = await claims_during(redis, queue, held_by["name"], IDLE_MS / 1000 + 3)
    live = await runs(redis, queue)
    consumers = await redis.xinfo_consumers(queue, "taskiq")
    victim.kill9()
    held = sum(c["pending"] for c in consumers if c["name"] == held_by["name"])

    async def taken_over() -> bool:
        consumers = await redis.xinfo_consumers(queue, "taskiq")
        return all(c["pending"] == 0 for c in consumers if c["name"] == held_by["name"])

    took = await wait("the victim's entries taken over", taken_over, 30, survivor)
    await wait("all 30 processed", Done(redis, queue, 30), 60, survivor)
    survivor.stop(30)
    counted = await runs(redis, queue)
    print(
        f"\nkill -9 of a worker holding entries (idle_timeout {IDLE_MS} ms): "
        f"{twice(live)} ran twice and {claimed} were claimed while both "
        f"lived; its {held} entries taken over "
        f"{took:.1f} s after the kill; {len(counted)}/30 ran, "
        f"{twice(counted)} more than once"
    )
    assert claimed == 0
    assert held > 0
    assert twice(live) == 0, live
    assert took <= IDLE_MS / 1000 + INTERVAL + SLACK
    assert sorted(counted) == list(range(30))
    assert twice(counted) <= 2, counted  # the batch the kill cut, at most
    assert survivor.crashes() == 0, survivor.output()


def refused(worker: Worker) -> bool:
    """Whether a worker process said that its consumer_name is in use."""
    return "ConsumerNameInUseError" in worker.log.read_text(errors="replace")


async def test_processes_sharing_a_consumer_name_never_run_each_others_entries(
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """``--workers 2`` with one explicit ``consumer_name`` for both processes,
    then SIGTERM while entries are held: no item runs twice. One process
    refuses to start, saying why. A second worker (a name of its own) then
    processes what is left: nothing is lost."""
    config = stream_config(redis_url)
    broker = await producer(config)
    shared = start_worker(
        {**config, "TB_CONSUMER_NAME": f"{queue}-pod"}, args=("--workers", "2")
    )
    await send(broker, "collect", list(range(16)))

    async def refused_or_busy() -> bool:
        return refused(shared) or await started(redis, queue, "collect") >= 12

    await wait("a refusal, or 6 batches started", refused_or_busy, 60, shared)
    shared.stop(60)
    stopped = await runs(redis, queue)
    rest = start_worker({**config, "TB_BATCH_DELAY": "0"})  # only what is left
    await wait("all 16 processed", Done(redis, queue, 16), 60, rest)
    rest.stop(30)
    counted = await runs(redis, queue)
    print(
        f"\n--workers 2 sharing consumer_name, SIGTERM: {len(stopped)}/16 ran, "
        f"{twice(stopped)} more than once; after a second worker: "
        f"{len(counted)}/16 ran, {twice(counted)} more than once; "
        f"refused: {refused(shared)}"
    )
    assert sorted(counted) == list(range(16))
    assert twice(counted) == 0, counted
    assert refused(shared), shared.output()
