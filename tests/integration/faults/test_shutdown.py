"""SIGTERM to ``taskiq worker``: the shutdown contract, on a stream, a list, AMQP.

Nothing that left the broker is lost or dropped, nothing runs twice, every
buffered item is flushed once (``flush_reason`` shutdown), and the worker
exits within ``--wait-tasks-timeout`` (plus ``--shutdown-timeout``) even
when a batch never returns. Every test prints what it measured (``-s``).
"""

import asyncio
import os
import re
import time
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import (
    Backlog,
    Producer,
    Settings,
    StartWorker,
)
from tests.integration.faults.observe import (
    batches,
    counts,
    pending,
    ready,
    results,
    send,
    started,
    wait,
)
from tests.integration.workers import Worker

#: Shutdown rounds of the AMQP partial-buffer test. The old worker (cf39e56)
#: left a processed message unacked in 4 of 49 rounds measured (the issue
#: says ~1 in 26): 10 rounds catch it about half the time.
AMQP_ROUNDS = int(os.environ.get("TB_AMQP_ROUNDS", "10"))
#: Rounds run at once, each on its own queue with its own worker (a
#: worker's stop races only with itself): half the test's time.
AMQP_AT_ONCE = 2
#: No new round starts after this long (seconds): the test stays under 60 s.
AMQP_ROUNDS_BUDGET = float(os.environ.get("TB_AMQP_ROUNDS_BUDGET", "30"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.timeout(max(60, 6 * AMQP_ROUNDS)),
]

KINDS = ["stream", "list", "amqp"]
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
async def test_sigterm_under_load_loses_nothing_and_runs_nothing_twice(
    kind: str,
    redis: Redis,
    queue: str,
    settings: Settings,
    backlog: Backlog,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """3,000 queued, batch_size 100, batches of 0.1 s; SIGTERM once 1,000
    are processed (2,000 still queued, 20 times a batch): processed + still
    in the broker == sent, none twice, every processed message has its
    result; a second worker then processes exactly the rest. On a list
    this is issue 9's finding 1 (the old worker lost the rest of the chunk
    it had read: 100 messages)."""
    # Not 5,000 as before: what is lost or run twice at the SIGTERM is at
    # most what the worker took, a few batches; 2,000 left is plenty.
    sent_count = 3000
    config = settings(
        TB_BATCH_SIZE=100, TB_BATCH_TIMEOUT=3600, TB_BATCH_DELAY=0.1, TB_QOS=200
    )
    broker = await producer(config)
    # The worker starts (1-3 s) while the messages are sent: the producer
    # made the queue, and the worker is stopped only once 1,000 are done.
    worker = start_worker(config)
    sent = await send(broker, "collect", list(range(sent_count)))

    async def thousand() -> bool:
        return (await counts(redis, queue))[0] >= 1000

    await wait("1,000 processed", thousand, 30, worker)
    took = worker.stop(timeout=20)
    assert worker.process.returncode == 0, worker.output()
    distinct, total = await counts(redis, queue)
    remaining = await backlog.left(queue)
    with_result = await ready(sent)
    print(
        f"\n{kind}: SIGTERM at >= 1,000 processed: exit in {took:.2f} s, "
        f"{distinct} processed ({total - distinct} twice), {remaining} left in "
        f"the broker, {sent_count - distinct - remaining} lost, "
        f"{with_result} results"
    )
    assert total == distinct, "an item was processed twice"
    assert distinct + remaining == sent_count, "messages were lost"
    assert with_result == distinct
    if kind == "stream":
        assert await pending(redis, queue) == 0, "a message taken was left unacked"
    assert took < 10

    second = start_worker({**config, "TB_BATCH_TIMEOUT": "0.2", "TB_BATCH_DELAY": "0"})

    async def all_processed() -> bool:
        return (await counts(redis, queue))[0] >= sent_count

    await wait("the rest processed by a second worker", all_processed, 30, second)
    assert await counts(redis, queue) == (sent_count, sent_count)
    assert await ready(sent) == sent_count
    second.stop(timeout=15)
    assert await backlog.left(queue) == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_flushes_the_partial_buffer_once(
    kind: str,
    redis: Redis,
    queue: str,
    settings: Settings,
    backlog: Backlog,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """150 messages, batch_size 100, batch_timeout 3,600 s: 100 run, 50 wait
    in the buffer; SIGTERM flushes them as one batch (``shutdown``), every
    message gets its result and the broker holds nothing afterwards. On AMQP
    (finding 15) it is run several rounds, each on a fresh queue: the old
    worker left a processed message unacked about once in 26 stops."""
    rounds = AMQP_ROUNDS if kind == "amqp" else 1
    began = time.monotonic()
    exits: list[float] = []

    def start_rounds(first: int) -> list[tuple[int, dict[str, str], Worker]]:
        """Start the workers of rounds ``first`` on, ``AMQP_AT_ONCE`` of them."""
        started_rounds = []
        for round_ in range(first, min(first + AMQP_AT_ONCE, rounds)):
            config = settings(
                f"{queue}-r{round_}",
                TB_BATCH_SIZE=100,
                TB_BATCH_TIMEOUT=3600,
                TB_QOS=200,
            )
            started_rounds.append((round_, config, start_worker(config)))
        return started_rounds

    current = start_rounds(0)
    while current:
        if current[0][0] >= 2 and time.monotonic() - began > AMQP_ROUNDS_BUDGET:
            break
        # The next rounds' workers start (1-3 s) while these rounds run: each
        # on a queue of its own, they never see these rounds' messages.
        upcoming = start_rounds(current[-1][0] + 1)
        exits += await asyncio.gather(
            *(
                _partial_buffer_round(
                    round_, config, worker, kind, redis, backlog, producer
                )
                for round_, config, worker in current
            )
        )
        current = upcoming
    print(
        f"\n{kind}: {len(exits)} round(s) of SIGTERM with 50 buffered: exits in "
        f"{', '.join(f'{e:.2f}' for e in exits)} s; nothing left, nothing twice"
    )


async def _partial_buffer_round(
    round_: int,
    config: dict[str, str],
    worker: Worker,
    kind: str,
    redis: Redis,
    backlog: Backlog,
    producer: Producer,
) -> float:
    """One round of the partial-buffer test, on ``config``'s own queue.

    :return: the seconds the worker took to exit after its SIGTERM.
    """
    name = config["TB_QUEUE"]
    broker = await producer(config)
    sent = await send(broker, "collect", list(range(150)), ordered=True)
    await results(sent[:100], 20, f"round {round_}: the first full batch")

    async def fifty_held() -> bool:
        # The first 100 done; the 50 others taken from the broker.
        if await started(redis, name, "collect") != 100:
            return False
        if kind == "stream" and await pending(redis, name) != 50:
            return False
        return await backlog.undelivered(name) == 0

    await wait("50 messages held by the worker", fifty_held, 10, worker)
    assert not await sent[120].is_ready()
    # In a thread: the other round of the pair goes on meanwhile.
    took = await asyncio.to_thread(worker.stop, 15)
    assert worker.process.returncode == 0, worker.output()
    values = await results(sent, 10, f"round {round_}: every result")
    assert all(not value.is_err for value in values), worker.output()
    recorded = await batches(redis, name, "collect")
    assert [(b["size"], b["reason"]) for b in recorded] == [
        (100, "size"),
        (50, "shutdown"),
    ], f"round {round_}: {recorded}"
    assert Counter(i for b in recorded for i in b["items"]) == Counter(range(150))
    assert sorted(values[120].return_value) == list(range(100, 150))
    assert await backlog.left(name) == 0, f"round {round_}: a message left in {kind}"
    return took


@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_waits_for_running_plain_tasks_and_runs_them_once(
    kind: str,
    redis: Redis,
    queue: str,
    settings: Settings,
    backlog: Backlog,
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """Finding 2: five plain tasks of 3 s run when SIGTERM comes; the worker
    waits for them and exits: 5 executions, 5 results, nothing left (the
    old stream worker ran them a second time: 10)."""
    config = settings(TB_PLAIN_DELAY=3)
    broker = await producer(config)
    worker = start_worker(config)
    sent = await send(broker, "slow_plain", list(range(5)))

    async def five_running() -> bool:
        return int(await redis.get(f"{queue}:plain_runs") or 0) >= 5

    await wait("5 plain tasks running", five_running, 15, worker)
    took = worker.stop(timeout=20)
    assert worker.process.returncode == 0, worker.output()
    runs = int(await redis.get(f"{queue}:plain_runs") or 0)
    values = await results(sent, 5, "the plain tasks' results")
    remaining = await backlog.left(queue)
    print(f"\n{kind}: 5 running plain tasks at SIGTERM: {runs} runs, exit {took:.2f} s")
    assert runs == 5
    assert [value.return_value for value in values] == list(range(5))
    assert remaining == 0
    if kind == "stream":
        assert await pending(redis, queue) == 0


@pytest.mark.parametrize(
    "kind",
    [
        "stream",
        "list",
        "amqp",
    ],
)
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
