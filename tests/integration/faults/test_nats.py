"""NATS JetStream (taskiq-nats ``PullBasedJetStreamBroker``) under a real worker.

JetStream redelivers a message not acked within the consumer's
``ack_wait``, and stops delivering to a consumer holding
``max_ack_pending`` unacked messages: both bind a worker that holds
messages in buffers. Skipped unless taskiq-nats is installed (it is not a
default dependency); NATS at ``NATS_URL`` (JetStream enabled). Each
test runs the real ``taskiq worker`` and has its own stream, deleted after.
"""

import importlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.integration.faults.conftest import Producer, StartWorker
from tests.integration.faults.observe import (
    batches,
    log_lines,
    ready,
    results,
    send,
    wait,
)

pytest.importorskip(
    "taskiq_nats",
    reason="taskiq-nats is not installed (pip install taskiq-nats to run these)",
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]


@pytest.fixture
async def config(
    nats_url: str, redis_url: str, queue: str
) -> AsyncIterator[dict[str, str]]:
    """Settings of a NATS test; its JetStream stream is deleted afterwards."""
    yield {"TB_BROKER": "nats", "NATS_URL": nats_url, "REDIS_URL": redis_url}
    nats = importlib.import_module("nats")
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(queue)
    except Exception:  # never created: nothing to delete
        pass
    finally:
        await client.close()


async def test_ack_wait_shorter_than_the_hold_warns(
    config: dict[str, str], producer: Producer, start_worker: StartWorker
) -> None:
    """``ack_wait`` 2 s, ``batch_timeout`` 5 s: the worker warns at start
    that JetStream would deliver a held message again."""
    settings = {**config, "TB_ACK_WAIT": "2", "TB_BATCH_TIMEOUT": "5"}
    broker = await producer(settings)
    worker = start_worker(settings)
    await results(await send(broker, "echo", [1]), 20, "the worker up")
    lines = log_lines(worker)
    print("\n" + "\n".join(line[:300] for line in lines))
    assert any("ack_wait" in line for line in lines), lines


async def test_size_only_over_max_ack_pending_does_not_wedge(
    config: dict[str, str], producer: Producer, start_worker: StartWorker
) -> None:
    """A size-only task of batch_size 100 on a consumer with
    ``max_ack_pending`` 10: JetStream sends 10 and waits for acks; the
    worker must flush them rather than wait for 100."""
    settings = {**config, "TB_MAX_ACK_PENDING": "10", "TB_SIZE_ONLY": "100"}
    broker = await producer(settings)
    worker = start_worker(settings)
    sent = await send(broker, "size_only_0", list(range(30)))

    async def progressed() -> bool:
        return await ready(sent) > len(sent) - 10

    await wait("all but fewer than 10 done", progressed, 20, worker)


async def test_a_held_message_is_not_received_twice(
    redis: Redis,
    queue: str,
    config: dict[str, str],
    producer: Producer,
    start_worker: StartWorker,
) -> None:
    """``ack_wait`` 1 s, messages held 4 s in a buffer: JetStream delivers
    them again meanwhile; the worker must not buffer them a second time."""
    settings = {**config, "TB_ACK_WAIT": "1", "TB_BATCH_TIMEOUT": "4"}
    broker = await producer(settings)
    worker = start_worker(settings)
    sent = await send(broker, "collect", list(range(5)), ordered=True)
    await results(sent, 20, "every result")
    recorded = await batches(redis, queue, "collect")
    processed = Counter(item for b in recorded for item in b["items"])
    print(f"\nheld 4 s with ack_wait 1 s: batches {[b['items'] for b in recorded]}")
    assert processed == Counter(range(5)), worker.output()
