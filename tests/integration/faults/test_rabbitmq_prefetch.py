"""RabbitMQ: several batched tasks sharing one channel's prefetch (``qos``).

An AMQP server stops delivering to a channel while ``qos`` messages are
unacked, whatever their task. ``AioPikaBroker`` on the machine's RabbitMQ;
results and records in the shared Redis. Prints what it measured (``-s``).
"""

import time

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import (
    Producer,
    Rabbit,
    StartWorker,
    amqp_settings,
)
from tests.integration.faults.observe import (
    batches,
    log_lines,
    ready,
    results,
    send,
    wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("qos", "sizes"),
    [
        pytest.param(10, [100, 100], id="qos10-two-tasks-of-100"),
        pytest.param(20, [10, 10, 10], id="qos20-three-tasks-of-10"),
    ],
)
async def test_size_only_tasks_sharing_the_prefetch_make_progress(
    qos: int,
    sizes: list[int],
    rabbit: Rabbit,
    redis_url: str,
    redis: Redis,
    queue: str,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 4: size-only batched tasks whose batch sizes add up to more
    than the prefetch, on one channel, with plain tasks among them: every
    message gets its result (the old worker deadlocked: each buffer waited
    for messages the server would not send), and the start warning names
    the budget they share."""
    settings = amqp_settings(
        rabbit, redis_url, queue, TB_QOS=qos, TB_SIZE_ONLY=",".join(map(str, sizes))
    )
    broker = await producer(settings)
    worker = start_worker(settings)
    tasks = [f"size_only_{index}" for index in range(len(sizes))]
    sent = []
    plain = []
    began = time.monotonic()
    for item in range(60):  # interleaved: every task, and a plain one
        for task in tasks:
            sent += await send(broker, task, [item])
        plain += await send(broker, "echo", [item])
    # Size-only buffers wait for full batches; the prefetch flushes them
    # once the worker holds qos messages, so fewer than qos wait at the end.
    assert [v.return_value for v in await results(plain, 30, "plain")] == list(
        range(60)
    )

    async def progressed() -> bool:
        return await ready(sent) > len(sent) - qos

    await wait("all but fewer than qos batched messages done", progressed, 30, worker)
    took = time.monotonic() - began
    waiting = len(sent) - await ready(sent)
    warnings = [line for line in log_lines(worker) if "prefetch" in line]
    stopped = worker.stop(timeout=15)  # flushes what waits
    assert worker.process.returncode == 0, worker.output()
    got = await results(sent, 10, "every batched message, after SIGTERM")
    assert all(not value.is_err for value in got), [v.error for v in got][:3]
    recorded = {task: await batches(redis, queue, task) for task in tasks}
    for task in tasks:
        assert sum(b["size"] for b in recorded[task]) == 60, recorded[task]
    print(
        f"\nqos {qos}, size-only tasks of {sizes} + plain: {len(sent) - waiting}/"
        f"{len(sent)} batched and 60/60 plain results in {took:.2f} s, the "
        f"{waiting} waiting flushed by SIGTERM (exit {stopped:.2f} s); batch sizes "
        f"{ {t: sorted({b['size'] for b in r}) for t, r in recorded.items()} }; "
        f"reasons {sorted({b['reason'] for r in recorded.values() for b in r})}; "
        f"warning: {warnings[0][:400] if warnings else None}"
    )
    assert len(warnings) == 1, log_lines(worker)
    (warning,) = warnings
    assert f"at most {qos} unacked" in warning
    assert "shared" in warning
    assert all(task in warning for task in tasks)

    async def nothing_left() -> bool:
        return await rabbit.state(queue) == (0, 0)

    await wait("nothing left in the queue", nothing_left, 10)
