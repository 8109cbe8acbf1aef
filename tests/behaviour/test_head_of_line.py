"""No head-of-line blocking behind a backlog of a batched task, on every path.

Issue 17: a backlog of a slow batched task bigger than what a worker holds
and parks left every message queued behind it waiting until the backlog
ran. Here the batched task cannot finish at all (its batch waits on the
test), parking is made small, and a plain task and another batched task,
queued behind the backlog, must still get their results; then every
message of the backlog runs, each exactly once.
"""

import asyncio

import pytest

from taskiq_batching import batch_task
from tests.behaviour.paths import Path, running

pytestmark = pytest.mark.timeout(60)

BACKLOG = 30
#: Parking's bound here: with the slow task's 4 held, 22 stay in the queue.
PARKED = 4


async def test_a_backlog_blocks_nothing_queued_behind_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("taskiq_batching.worker.parking.PARK_LIMIT", PARKED)
    monkeypatch.setattr("taskiq_batching.worker.parking.PARK_LIMIT_UNACKED", PARKED)
    broker = path.broker
    gate = asyncio.Event()
    ran: list[int] = []

    @batch_task(broker, task_name="slow", batch_size=2, batch_timeout=0.05)
    async def slow(items: list[int]) -> int:
        await gate.wait()
        ran.extend(items)
        return len(items)

    @batch_task(broker, task_name="other", batch_size=1)
    async def other(items: list[int]) -> int:
        return sum(items)

    @broker.task(task_name="plain")
    async def plain(value: int) -> int:
        return value

    async with running(path):
        backlog = [await slow.kiq(n) for n in range(BACKLOG)]
        behind = await plain.kiq(7)
        other_behind = await other.kiq(5)
        try:
            # Before: no result until the backlog ran (here: never).
            assert (await behind.wait_result(timeout=20)).return_value == 7
            assert (await other_behind.wait_result(timeout=20)).return_value == 5
            assert not ran, "the backlog's task cannot finish yet"
        finally:
            gate.set()
        for task in backlog:
            assert not (await task.wait_result(timeout=30)).is_err
    assert sorted(ran) == list(range(BACKLOG)), "each item exactly once"
    for task in backlog:
        assert path.journal.names(task.task_id).count("pre_execute") == 1
        if path.acks:
            assert path.journal.names(task.task_id).count("ack") == 1
