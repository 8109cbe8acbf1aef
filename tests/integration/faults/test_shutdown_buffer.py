"""SIGTERM to ``taskiq worker`` with a partial buffer: flushed once (``flush_reason``
shutdown), on a stream, a list, AMQP (several rounds: finding 15). The rest
of the shutdown contract: ``test_shutdown.py``.
"""

import asyncio
import os
import time
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import (
    KINDS,
    Backlog,
    Producer,
    Settings,
    StartWorker,
)
from tests.integration.faults.observe import (
    batches,
    pending,
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
