"""Workers joining and leaving a Redis stream's fleet under load (issue 18, item 7).

Two ``taskiq worker`` processes share a stream's consumer group while a
producer sends at a steady rate; a third joins mid-load, then one of the
first two gets SIGTERM while the producer keeps sending. Each item's runs
are counted from the batches' own records: every item runs exactly once,
and the fleet never stops processing (the longest pause between two
batches is bounded). Batches of up to 10 take 0.3 s each, one at a time
per process, so each worker reads ahead and holds entries (buffered,
parked behind its running batch) when it is stopped: those are left for
its siblings, which take them within a sweep. Prints what it measured
(``-s``).
"""

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AsyncBroker

from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import batches, counts, pending, send, wait

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(180)]

IDLE_MS = 3000
#: Items are sent every ``PERIOD`` seconds, a chunk at a time.
PERIOD = 0.1
#: Longest pause between two batches of the fleet under load, in seconds:
#: a stopped worker's entries are taken within a sweep (``IDLE_MS / 2``),
#: plus what a busy, shared machine adds.
MAX_GAP = IDLE_MS / 2000 + 5.0
#: Items the fleet processes after the SIGTERM'd worker exited, the producer
#: still sending: two full batches show the fleet goes on. (It was 50: the
#: producer's extra items then took the fleet ~40 s more to drain, proving
#: nothing more.)
AFTER_EXIT = 20


#: (seconds a batch takes, items sent per period): 1 s batches at 20
#: items/s, what two workers carry: entries wait behind running batches for
#: longer than ``idle_timeout``, kept fresh by their worker. (Short holds,
#: 0.3 s batches at 50 items/s, passed before the refresh too: left out
#: for the suite's time.)
LOADS = [
    pytest.param((1.0, 2), id="long-holds"),
]


def fleet_config(redis_url: str, delay: float) -> dict[str, str]:
    return {
        "TB_BROKER": "stream",
        "REDIS_URL": redis_url,
        "TB_BATCH_SIZE": "10",
        "TB_BATCH_TIMEOUT": "0.2",
        "TB_BATCH_DELAY": str(delay),
        "TB_IDLE_MS": str(IDLE_MS),
    }


class SteadyProducer:
    """Sends ``chunk`` new items every ``PERIOD`` until stopped."""

    def __init__(self, broker: AsyncBroker, chunk: int) -> None:
        self.broker = broker
        self.chunk = chunk
        self.sent = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            items = list(range(self.sent, self.sent + self.chunk))
            await send(self.broker, "collect", items)
            self.sent += self.chunk
            with contextlib.suppress(TimeoutError):  # the rate, not a barrier
                await asyncio.wait_for(self._stopping.wait(), PERIOD)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> int:
        """Stop sending (a chunk being sent is sent whole); return the count."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        return self.sent


@pytest.fixture
async def steady(
    request: pytest.FixtureRequest, producer: Producer, redis_url: str
) -> AsyncIterator[tuple[SteadyProducer, dict[str, str]]]:
    """The steady producer and the workers' settings of the test's load."""
    delay, chunk = request.param
    config = fleet_config(redis_url, delay)
    sender = SteadyProducer(await producer(config), chunk)
    try:
        yield sender, config
    finally:
        await sender.stop()


async def pids(redis: Redis, queue: str) -> set[int]:
    return {record["pid"] for record in await batches(redis, queue, "collect")}


def longest_gap(records: list[dict[str, Any]], since: float, until: float) -> float:
    """The longest time between two batches (or the window's ends) in a window."""
    times = sorted(r["at"] for r in records if since <= r["at"] <= until)
    edges = [since, *times, until]
    return float(max(later - earlier for earlier, later in itertools.pairwise(edges)))


@pytest.mark.parametrize("steady", LOADS, indirect=True)
async def test_workers_join_and_leave_under_load_and_every_item_runs_once(
    redis: Redis,
    queue: str,
    start_worker: StartWorker,
    steady: tuple[SteadyProducer, dict[str, str]],
) -> None:
    """Two workers under a steady load; a third joins; one of the
    first two gets SIGTERM. Every item runs exactly once; the joiner runs
    batches; batches go on after the SIGTERM; the fleet never pauses longer
    than ``MAX_GAP``."""
    sender, config = steady
    first = start_worker(config)
    second = start_worker(config)
    sender.start()
    began = time.time()

    async def both_run() -> bool:
        return len(await pids(redis, queue)) == 2

    await wait("both workers running batches", both_run, 60, first)
    before = await pids(redis, queue)
    joiner = start_worker(config)

    async def joiner_runs() -> bool:
        return len(await pids(redis, queue) - before) == 1

    await wait("the joiner running batches", joiner_runs, 60, joiner)
    held = await pending(redis, queue)
    stopped_at = time.time()
    took = first.stop(30)  # while the producer sends
    exited_at = time.time()
    done_at_exit = (await counts(redis, queue))[0]

    async def progress_after_exit() -> bool:
        return (await counts(redis, queue))[0] >= done_at_exit + AFTER_EXIT

    await wait(
        f"{AFTER_EXIT} more items processed after the SIGTERM", progress_after_exit, 60
    )
    sent = await sender.stop()
    sent_at = time.time()

    async def all_done() -> bool:
        if (await counts(redis, queue))[0] < sent:
            return False
        (group,) = await redis.xinfo_groups(queue)
        return group["lag"] == 0 and await pending(redis, queue) == 0

    await wait(f"all {sent} processed", all_done, 120, second)
    second.stop(30)
    joiner.stop(30)
    records = await batches(redis, queue, "collect")
    runs: dict[int, int] = {}
    for record in records:
        for item in record["items"]:
            runs[item] = runs.get(item, 0) + 1
    twice = sorted(item for item, n in runs.items() if n > 1)
    gap = longest_gap(records, began + 1, sent_at)
    after_exit = sum(r["size"] for r in records if r["at"] > exited_at)
    print(
        f"\n2 workers + 1 joining + 1 SIGTERM'd, {sent} items at "
        f"{sender.chunk / PERIOD:.0f}/s: {len(runs)}/{sent} ran, {len(twice)} more "
        f"than once; {held} entries pending fleet-wide at the SIGTERM, the "
        f"stopped worker exited in {took:.1f} s (signalled "
        f"{stopped_at - began:.1f} s in); {after_exit} items ran after its "
        f"exit; longest pause between two batches {gap:.2f} s; "
        f"{len(await pids(redis, queue))} worker processes ran batches"
    )
    assert sorted(runs) == list(range(sent))
    assert twice == [], twice
    assert gap <= MAX_GAP
    for worker in (first, second, joiner):
        assert worker.crashes() == 0, worker.output()
