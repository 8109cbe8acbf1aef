"""``task.map``: chunks, waiting for each chunk, kill switches, input order."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from taskiq import AsyncTaskiqTask, InMemoryBroker, TaskiqResult
from taskiq.brokers.inmemory_broker import InmemoryResultBackend

from taskiq_batching import (
    AnyFailed,
    BatchConfigError,
    BatchingMiddleware,
    CountExceeded,
    NotFinished,
    NotSent,
    RateExceeded,
    batch_task,
    per_item,
)
from taskiq_batching.mapping import KillSwitch, MapEntry, map_items

pytestmark = pytest.mark.timeout(20)


def make_broker() -> InMemoryBroker:
    return InMemoryBroker(max_stored_results=-1).with_middlewares(BatchingMiddleware())


def results(done: list[MapEntry]) -> list[Any]:
    return [
        entry.is_err or entry.return_value if isinstance(entry, TaskiqResult) else entry
        for entry in done
    ]


async def test_a_failure_in_chunk_2_of_10_leaves_chunks_3_to_10_unsent() -> None:
    broker = make_broker()
    calls: list[list[int]] = []

    @batch_task(broker, task_name="mapped", batch_size=10, batch_timeout=5)
    async def mapped(items: list[int]) -> Any:
        calls.append(items)
        return per_item([ValueError("bad") if n == 13 else n * 2 for n in items])

    await broker.startup()
    done = await mapped.map(range(100), chunk_size=10, kill_switch=AnyFailed())
    await broker.shutdown()
    assert len(done) == 100
    assert [d.return_value for d in done[:10] if isinstance(d, TaskiqResult)] == [
        n * 2 for n in range(10)
    ]
    chunk_2 = done[10:20]
    assert [isinstance(d, TaskiqResult) and d.is_err for d in chunk_2] == [
        n == 13 for n in range(10, 20)
    ]
    unsent = done[20:]
    assert all(isinstance(d, NotSent) for d in unsent)
    assert [d.index for d in unsent if isinstance(d, NotSent)] == list(range(20, 100))
    assert "1 item(s) failed" in str(unsent[0])
    assert sorted(n for batch in calls for n in batch) == list(range(20))


@pytest.mark.parametrize(
    ("switch", "sent"),
    [
        (None, 40),
        (CountExceeded(2), 20),  # 3 failures after chunk 2 (>2)
        (CountExceeded(3), 30),  # the 4th, in chunk 3
        (CountExceeded(4), 40),
        (RateExceeded(0.1, min_count=10), 20),  # 3 of 20 = 15%
        (RateExceeded(0.1, min_count=30), 30),  # judged at 30: 4 of 30 = 13%
        (RateExceeded(0.2, min_count=1), 40),
    ],
)
async def test_kill_switches(switch: KillSwitch | None, sent: int) -> None:
    broker = make_broker()
    failing = {11, 12, 15, 25}

    @batch_task(broker, task_name="mapped", batch_size=10, batch_timeout=5)
    async def mapped(items: list[int]) -> Any:
        return per_item([ValueError() if n in failing else n for n in items])

    await broker.startup()
    done = await mapped.map(range(40), chunk_size=10, kill_switch=switch)
    await broker.shutdown()
    assert sum(not isinstance(d, NotSent) for d in done) == sent
    assert all(isinstance(d, NotSent) for d in done[sent:])


async def test_map_of_a_task_declared_with_broker_task_and_extra_arguments() -> None:
    broker = make_broker()

    @broker.task(task_name="scaled", batch=True, batch_size=5, batch_timeout=0.01)
    async def scaled(items: list[int], factor: int) -> Any:
        return per_item([n * factor for n in items])

    await broker.startup()
    done = await scaled.map(range(7), chunk_size=5, kwargs={"factor": 3})  # type: ignore[attr-defined]
    await broker.shutdown()
    assert results(done) == [n * 3 for n in range(7)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CountExceeded(-1), "count must be >= 0"),
        (lambda: CountExceeded(True), "count must be an int"),
        (lambda: RateExceeded(1.5), "ratio must be a number from 0 to 1"),
        (lambda: RateExceeded(0.5, min_count=0), "min_count must be an int >= 1"),
    ],
)
def test_invalid_kill_switches_are_refused(make: Any, message: str) -> None:
    with pytest.raises(BatchConfigError, match=message):
        make()


async def test_an_invalid_chunk_size_is_refused_before_sending() -> None:
    broker = make_broker()

    @batch_task(broker, task_name="mapped", batch_size=5)
    async def mapped(items: list[int]) -> int:
        raise AssertionError("nothing is sent")

    with pytest.raises(BatchConfigError, match="chunk_size must be an int >= 1"):
        await mapped.map([1], chunk_size=0)


class Backend(InmemoryResultBackend[Any]):
    """Results stored by the test; reading the ones in ``broken`` raises."""

    def __init__(self) -> None:
        super().__init__(max_stored_results=-1)
        self.broken: set[str] = set()

    async def is_result_ready(self, task_id: str) -> bool:
        if task_id in self.broken:
            raise ConnectionError("result backend gone")
        return await super().is_result_ready(task_id)


def fake_send(backend: Backend, finished: set[int], chunks: list[list[int]]) -> Any:
    """Sends a chunk: the items in ``finished`` have results, the others never."""

    async def send(chunk: Sequence[Any]) -> Sequence[AsyncTaskiqTask[Any]]:
        chunks.append(list(chunk))
        tasks = []
        for item in chunk:
            task_id = f"id-{item}"
            if item in finished:
                result = TaskiqResult(
                    is_err=False, return_value=item * 10, execution_time=0.0
                )
                await backend.set_result(task_id, result)
            tasks.append(AsyncTaskiqTask(task_id, backend))
        return tasks

    return send


async def test_a_result_that_never_comes_keeps_what_finished_and_marks_the_rest() -> (
    None
):
    # Chunk 2 (items 4-7): item 5's worker died; 4, 6 and 7 finished.
    backend = Backend()
    chunks: list[list[int]] = []
    send = fake_send(backend, {0, 1, 2, 3, 4, 6, 7}, chunks)
    done = await map_items(send, range(10), 4, AnyFailed(), 0.2)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7]]  # chunk 3 never sent
    assert results(done[:5]) == [0, 10, 20, 30, 40]
    assert done[5] == NotFinished(5, "id-5", "its result did not come within 0.2 s")
    assert results(done[6:8]) == [60, 70]
    stopped = "map stopped: the result of item 5 did not come within 0.2 s"
    assert done[8:] == [NotSent(8, stopped), NotSent(9, stopped)]


async def test_results_after_the_missing_one_are_kept_or_marked_in_order() -> None:
    # After item 1 times out, the rest of its chunk is looked at once: 2 has
    # finished, 3 has not, reading 4 fails.
    backend = Backend()
    backend.broken.add("id-4")
    send = fake_send(backend, {0, 2}, [])
    done = await map_items(send, range(5), 5, None, 0.2)
    stopped = "map stopped: the result of item 1 did not come within 0.2 s"
    assert results(done[:1]) == [0]
    assert done[1] == NotFinished(1, "id-1", "its result did not come within 0.2 s")
    assert results(done[2:3]) == [20]
    assert done[3] == NotFinished(3, "id-3", stopped)
    assert done[4] == NotFinished(
        4,
        "id-4",
        f"{stopped}; then reading its own result failed: ResultIsReadyError: "
        "Cannot find out if the task is ready (ConnectionError: result backend gone)",
    )


async def test_a_result_that_cannot_be_read_stops_the_map_without_losing_results() -> (
    None
):
    backend = Backend()
    backend.broken.add("id-2")
    send = fake_send(backend, set(range(6)), [])
    done = await map_items(send, range(6), 2, None, None)
    why = (
        "could not be read: ResultIsReadyError: Cannot find out if the task is "
        "ready (ConnectionError: result backend gone)"
    )
    assert results(done[:2]) == [0, 10]
    assert done[2] == NotFinished(2, "id-2", f"its result {why}")
    assert results(done[3:4]) == [30]
    stopped = f"map stopped: the result of item 2 {why}"
    assert done[4:] == [NotSent(4, stopped), NotSent(5, stopped)]


async def test_map_of_a_batch_that_never_finishes_returns_the_finished_chunks() -> None:
    broker = make_broker()
    release = asyncio.Event()

    @batch_task(broker, task_name="mapped", batch_size=5, batch_timeout=5)
    async def mapped(items: list[int]) -> Any:
        if items[0] >= 5:  # the second chunk's batch hangs, as on a dead worker
            await release.wait()
        return per_item([n * 2 for n in items])

    await broker.startup()
    done = await mapped.map(range(15), chunk_size=5, timeout=2)
    release.set()
    await broker.shutdown()
    assert results(done[:5]) == [0, 2, 4, 6, 8]
    assert [type(entry) for entry in done[5:10]] == [NotFinished] * 5
    assert [entry.index for entry in done[5:10]] == list(range(5, 10))  # type: ignore[union-attr]
    assert [type(entry) for entry in done[10:]] == [NotSent] * 5
    assert [entry.index for entry in done[10:]] == list(range(10, 15))  # type: ignore[union-attr]
