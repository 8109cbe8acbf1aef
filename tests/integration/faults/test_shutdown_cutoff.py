"""SIGTERM to ``taskiq worker`` while a batch never returns: the worker exits
within ``--wait-tasks-timeout`` plus ``--shutdown-timeout`` and leaves the cut-off
messages to the broker, on a stream, a list, AMQP. The rest of the shutdown
contract: ``test_shutdown.py``.
"""

import re

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import (
    KINDS,
    Backlog,
    Producer,
    Settings,
    StartWorker,
)
from tests.integration.faults.observe import send, started, wait

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.timeout(60),
]

#: ``--wait-tasks-timeout`` and ``--shutdown-timeout`` of the cut-off tests
#: (2 s, not 3 s as before: the bound is the same sum, 2 s less to wait).
WAIT_TASKS = 2.0
SHUTDOWN = 2.0
#: Slack over WAIT_TASKS + SHUTDOWN for the process's exit on a loaded
#: machine. The yardstick, measured the same way (SIGTERM, one plain task
#: that never returns, both options 3 s) on stock taskiq 0.13 without the
#: plugin: AioPikaBroker exits in 5.4-5.5 s; RedisStreamBroker never exits
#: (its listener swallows the cancellation); ListQueueBroker's worker child
#: dies of a read timeout after 5 s idle and is restarted.
STOP_SLACK = 4.0
STOP_ARGS = (
    "--wait-tasks-timeout",
    str(WAIT_TASKS),
    "--shutdown-timeout",
    str(SHUTDOWN),
)


@pytest.mark.parametrize("kind", KINDS)
async def test_never_returning_batch_is_cut_off_at_the_stop_budget(
    kind: str,
    redis: Redis,
    queue: str,
    settings: Settings,
    backlog: Backlog,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 7: a batch that never returns, SIGTERM with
    ``--wait-tasks-timeout 2 --shutdown-timeout 2``: the worker exits within
    2 + 2 s plus slack, logs how many messages it cut off, and leaves them
    to the broker (a stream: pending and claimable at once; AMQP: requeued;
    a list: pushed back)."""
    config = settings(TB_QOS=100)
    broker = await producer(config)
    worker = start_worker(config, args=STOP_ARGS)
    # A batch of 10 runs forever; a batch of 5 waits for it (batch_concurrency 1).
    await send(broker, "hang", list(range(15)))

    async def running() -> bool:
        return await started(redis, queue, "hang") >= 10

    await wait("the never-returning batch running", running, 15, worker)
    took = worker.stop(timeout=30)
    log = worker.output()
    cut = re.search(r"(\d+) message\(s\) of batches still running", log)
    if kind == "stream":
        claimable = await _claimable(redis, queue)
    remaining = await backlog.left(queue)
    print(
        f"\n{kind}: never-returning batch, SIGTERM: exit in {took:.2f} s "
        f"(bound {WAIT_TASKS + SHUTDOWN + STOP_SLACK:g} s), exit code "
        f"{worker.process.returncode}, cut-off line: {cut and cut[0]}, "
        f"{remaining} message(s) left to the broker"
    )
    assert took < WAIT_TASKS + SHUTDOWN + STOP_SLACK, log
    assert cut is not None, log
    assert int(cut[1]) == 15, log
    assert remaining == 15
    if kind == "stream":
        assert claimable == 15


async def _claimable(redis: Redis, queue: str) -> int:
    """Entries another consumer may claim now, given the worker's idle_timeout."""
    _, claimed, *_ = await redis.xautoclaim(
        queue, "taskiq", "tb-test-claimer", min_idle_time=600_000, count=1000
    )
    return len(claimed)
