"""Who waits for whom in one worker: slow batches, bounded concurrency.

RedisStreamBroker on the shared Redis. Every test prints what it measured
(``-s``).
"""

import time

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import pending, results, send, started, wait

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]

#: Most seconds from ``kiq`` to the stored result of a plain task (and of a
#: batched task, on top of its batch_timeout) while another task is stuck.
LATENCY_BUDGET = 1.0
#: Values of the extra argument in the bounds test: one buffer per value and
#: task, far more than any bound (it was 100: as telling, for more time).
KEYS = 40


async def test_a_slow_batched_task_delays_neither_plain_tasks_nor_other_batches(
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 8: the task ``slow`` (batch_size 2, batches of 5 s) has 20
    messages queued, far over what a worker holds of it; plain tasks and
    another batched task (``collect``, batch_timeout 0.2 s) on the same
    stream still get their results within a second (old: ~20 s)."""
    config = {
        "TB_BROKER": "stream",
        "REDIS_URL": redis_url,
        "TB_SLOW_DELAY": "5",
        "TB_BATCH_SIZE": "10",
        "TB_BATCH_TIMEOUT": "0.2",
    }
    broker = await producer(config)
    worker = start_worker(config)
    await results(await send(broker, "echo", [0]), 20, "the worker up")
    await send(broker, "slow", list(range(20)), ordered=True)

    async def slow_running() -> bool:
        return await started(redis, queue, "slow") >= 2

    await wait("a batch of slow running", slow_running, 10, worker)
    plain: list[float] = []
    batched: list[float] = []
    for item in range(5):
        for task, latencies in (("echo", plain), ("collect", batched)):
            began = time.monotonic()
            (value,) = await results(
                await send(broker, task, [item]), 10, f"{task} behind slow"
            )
            latencies.append(time.monotonic() - began)
            assert not value.is_err, value.error
    print(
        f"\nbehind a task whose batches take 5 s: plain latency max "
        f"{max(plain):.3f} s, batched (timeout 0.2 s) max {max(batched):.3f} s"
    )
    assert await started(redis, queue, "slow") < 20  # slow was still busy
    assert max(plain) < LATENCY_BUDGET, plain
    assert max(batched) < 0.2 + LATENCY_BUDGET, batched


@pytest.mark.parametrize(
    ("max_concurrent", "task_concurrency", "bound_all", "bound_task"),
    [
        pytest.param("", "", 16, 1, id="defaults"),
        pytest.param("3", "2", 3, 2, id="configured"),
    ],
)
async def test_batch_calls_running_at_once_stay_within_their_bounds(
    max_concurrent: str,
    task_concurrency: str,
    bound_all: int,
    bound_task: int,
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 9: 1,200 messages of two batched tasks over ``KEYS`` (40)
    values of an extra argument (80 buffers, five times the process's
    default bound), all queued before the worker starts. The
    batch calls running at once, counted inside the functions, never exceed
    the task's ``batch_concurrency`` (default 1) nor the process's
    ``BatchingMiddleware(max_concurrent_batches=...)`` (default 16); every
    message gets its result."""
    config = {
        "TB_BROKER": "stream",
        "REDIS_URL": redis_url,
        "TB_BATCH_DELAY": "0.02",
        "TB_MAX_CONCURRENT": max_concurrent,
        "TB_TASK_CONCURRENCY": task_concurrency,
    }
    broker = await producer(config)
    sent = []
    # Items n * 1000 + key, 15 per key and task, in runs of 5 per key: most
    # buffers are partial when the worker's bound makes them flush at once.
    for run in range(3):
        for key in range(KEYS):
            items = [n * 1000 + key for n in range(5 * run, 5 * run + 5)]
            sent += await send(broker, "bounded_a", items, key=key)
            sent += await send(broker, "bounded_b", items, key=key)
    worker = start_worker(config)
    began = time.monotonic()

    async def all_processed() -> bool:
        return int(await redis.get(f"{queue}:processed") or 0) >= len(sent)

    await wait("every message processed", all_processed, 45, worker)
    took = time.monotonic() - began
    seen = {
        _text(key): int(value)
        for key, value in (await redis.hgetall(f"{queue}:concurrency")).items()
    }
    got = await results(sent, 20, "every result")
    errors = [value.error for value in got if value.is_err]
    print(
        f"\n{len(sent)} messages, {2 * KEYS} buffers, bounds (process {bound_all}, "
        f"task {bound_task}): most batch calls at once {seen}; all processed in "
        f"{took:.1f} s; {len(errors)} error(s)"
    )
    assert not errors, errors[:3]
    assert int(await redis.get(f"{queue}:processed") or 0) == len(sent)
    assert seen["all"] <= bound_all, seen
    assert seen["bounded_a"] <= bound_task, seen
    assert seen["bounded_b"] <= bound_task, seen
    assert await pending(redis, queue) == 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
