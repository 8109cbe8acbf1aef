"""Every batched message goes through taskiq's own per-message order, on every path.

The reference is taskiq itself: a plain task on the same broker, run by
taskiq's Receiver (or ``InMemoryBroker``'s callback), gives the sequence
of middleware hooks and acks that each batched message must give too.
"""

import asyncio
from typing import Any

import pytest
from taskiq import SimpleRetryMiddleware, TaskiqDepends
from taskiq.acks import AcknowledgeType
from taskiq.exceptions import NoResultError

from taskiq_batching import BatchInfo, batch_task, per_item
from taskiq_batching.labels import TASK_LABELS
from tests.behaviour.paths import Path, running

pytestmark = pytest.mark.timeout(30)

ACK_TYPES = [
    AcknowledgeType.WHEN_RECEIVED,
    AcknowledgeType.WHEN_EXECUTED,
    AcknowledgeType.WHEN_SAVED,
]


#: The transport each path's worker reads with (InMemoryBroker: none).
TRANSPORTS = {
    "inmemory": [],
    "generic": ["generic"],
    "redis-stream": ["redis-stream"],
    "redis-list": ["redis-list"],
    "nats": ["nats-jetstream"],
}


async def test_each_path_reads_through_its_own_transport(path: Path) -> None:
    # A Redis path that fell back to the generic transport (no hiredis)
    # would pass every other test here: parity with the generic one would
    # then prove nothing about the Redis transports.
    @batch_task(path.broker, task_name="batched", batch_size=2)
    async def batched(items: list[int]) -> int:
        return len(items)

    async with running(path):
        sent = [await batched.kiq(i) for i in range(2)]
        for task in sent:
            assert (await task.wait_result(timeout=10)).return_value == 2
    assert path.journal.transports == TRANSPORTS[path.name]


@pytest.mark.parametrize("ack_type", [a.value for a in ACK_TYPES])
@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
async def test_each_message_follows_taskiqs_order(
    path: Path, ack_type: str, fails: bool
) -> None:
    broker = path.broker

    @broker.task(task_name="plain", ack_type=ack_type)
    async def plain(item: int) -> int:
        if fails:
            raise ValueError("plain failed")
        return item

    @batch_task(broker, task_name="batched", batch_size=3, ack_type=ack_type)
    async def batched(items: list[int]) -> int:
        if fails:
            raise ValueError("batch failed")
        return sum(items)

    async with running(path):
        reference = await plain.kiq(1)
        await reference.wait_result(timeout=10)
        sent = [await batched.kiq(i) for i in range(3)]
        for task in sent:
            assert (await task.wait_result(timeout=10)).is_err is fails
    expected = path.journal.names(reference.task_id)
    assert expected[0] == "pre_execute"
    assert ("ack" in expected) is path.acks
    assert ("on_error" in expected) is fails
    for task in sent:
        assert path.journal.names(task.task_id) == expected, task.task_id
        # One message object from pre_execute to post_save.
        assert len(path.journal.objects(task.task_id)) == 1


@pytest.mark.parametrize("ack_type", ["manual", "when_saved"])
async def test_an_ack_from_the_batch_acks_each_message_once(
    path: Path, ack_type: str
) -> None:
    broker = path.broker

    @batch_task(broker, task_name="batched", batch_size=3, ack_type=ack_type)
    async def batched(items: list[int], batch: BatchInfo = TaskiqDepends()) -> int:
        await batch.ack()
        await batch.ack()  # acked at most once, as taskiq's AckController does
        return len(items)

    async with running(path):
        sent = [await batched.kiq(i) for i in range(3)]
        for task in sent:
            assert (await task.wait_result(timeout=10)).return_value == 3
    for task in sent:
        events = path.journal.names(task.task_id)
        assert events.count("ack") == (1 if path.acks else 0)
        if path.acks:
            # Acked by the batch function: after pre_execute, before the rest.
            assert events.index("ack") == 1


async def test_outcomes_and_error_types_are_the_same_on_every_path(
    path: Path,
) -> None:
    broker = path.broker

    @batch_task(broker, task_name="mixed", batch_size=4, timeout=5)
    async def mixed(items: list[int]) -> Any:
        if -1 in items:
            raise KeyError("poison")
        return per_item(ValueError(f"bad {i}") if i == 2 else i * 10 for i in items)

    @batch_task(broker, task_name="wrong_length", batch_size=2)
    async def wrong_length(items: list[int]) -> Any:
        return per_item([1])

    async with running(path):
        ok = [await mixed.kiq(i) for i in (1, 2, 3)]
        invalid = await mixed.kiq("not a number")  # type: ignore[call-overload]
        ok.append(await mixed.kiq(4))
        poisoned = [await mixed.kiq(i) for i in (-1, 5, 6, 7)]
        short = [await wrong_length.kiq(i) for i in (1, 2)]
        seen = {
            "ok": [await t.wait_result(timeout=10) for t in ok],
            "invalid": [await invalid.wait_result(timeout=10)],
            "poisoned": [await t.wait_result(timeout=10) for t in poisoned],
            "short": [await t.wait_result(timeout=10) for t in short],
        }
    summary = {
        name: [
            (r.is_err, r.return_value, type(r.error).__name__ if r.error else None)
            for r in results
        ]
        for name, results in seen.items()
    }
    assert summary == {
        "ok": [
            (False, 10, None),
            (True, None, "ValueError"),
            (False, 30, None),
            (False, 40, None),
        ],
        "invalid": [(True, None, "BatchItemError")],
        "poisoned": [(True, None, "KeyError")] * 4,
        "short": [(True, None, "BatchResultError")] * 2,
    }
    labels = seen["ok"][0].labels
    # The task's settings stay with the worker; taskiq's labels travel.
    assert not TASK_LABELS.intersection(labels)
    assert float(labels["timeout"]) == 5


async def test_no_result_error_stores_nothing_and_still_acks(path: Path) -> None:
    broker = path.broker

    @broker.task(task_name="plain")
    async def plain(item: int) -> None:
        raise NoResultError

    @batch_task(broker, task_name="batched", batch_size=2)
    async def batched(items: list[int]) -> None:
        raise NoResultError

    async with running(path):
        reference = await plain.kiq(1)
        sent = [await batched.kiq(i) for i in range(2)]
        everyone = [reference.task_id, *(t.task_id for t in sent)]
        await path.journal.wait(everyone, "post_execute", timeout=10)
    expected = path.journal.names(reference.task_id)
    assert "post_save" not in expected
    for task in sent:
        assert path.journal.names(task.task_id) == expected
        assert not await task.is_ready()


async def test_retries_rerun_only_the_failed_messages(
    path: Path,
) -> None:
    broker = path.broker
    broker.add_middlewares(SimpleRetryMiddleware(default_retry_count=2))
    calls: list[list[int]] = []

    @batch_task(
        broker,
        task_name="flaky",
        batch_size=3,
        batch_timeout=0.2,
        retry_on_error=True,
    )
    async def flaky(items: list[int]) -> Any:
        calls.append(list(items))
        first = len(calls) == 1
        return per_item(RuntimeError("again") if first and i == 2 else i for i in items)

    async with running(path):
        sent = [await flaky.kiq(i) for i in (1, 2, 3)]
        results = [await t.wait_result(timeout=10) for t in sent]
    assert [r.return_value for r in results] == [1, 2, 3]
    assert calls == [[1, 2, 3], [2]]


async def test_each_message_s_execution_time_is_its_share_of_the_batch(
    path: Path,
) -> None:
    broker = path.broker

    @batch_task(broker, task_name="timed", batch_size=4)
    async def timed(items: list[int]) -> int:
        await asyncio.sleep(0.2)
        return len(items)

    async with running(path):
        sent = [await timed.kiq(i) for i in range(4)]
        results = [await task.wait_result(timeout=10) for task in sent]
    shares = {result.execution_time for result in results}
    assert len(shares) == 1
    (share,) = shares
    # The four shares add up to the batch's run time (at least its sleep).
    assert 0.2 <= 4 * share < 0.2 + 5.0
