"""``batch_key`` across NATS worker processes waiting in the broker (issue 18 item 4).

A lease's round holds every key of the task; its holder keeps each key
apart, so that each key's batch is what the whole round brought of it,
not a share of a round counted as one. Real ``taskiq worker`` processes
running tests/integration/nats_alo_app.py on the real NATS server
(``NATS_URL``), a record of every batch in the real Redis.
"""

import json
from collections import Counter, defaultdict
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq.kicker import AsyncKicker

from taskiq_batching import batch_task
from tests.integration.test_nats_alo import (  # noqa: F401 (fixtures)
    StartWorker,
    batch_stream,
    batch_waiting,
    make_producer,
    queue_prefix,
    runs,
    send_steadily,
    start_worker,
    stream,
)
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEYS = 5


def key_of(item: int) -> int:
    """The app's ``batch_key`` with ``TB_KEYS`` = ``KEYS``."""
    return item % KEYS


async def key_fills(redis: Redis, name: str) -> dict[int, float]:
    """Each key's mean batch size."""
    raw = await redis.lrange(f"{name}:batches", 0, -1)
    sizes: dict[int, list[int]] = defaultdict(list)
    for batch in raw:
        items = json.loads(batch)["items"]
        assert len({key_of(item) for item in items}) == 1, items  # one key
        sizes[key_of(items[0])].append(len(items))
    return {key: sum(group) / len(group) for key, group in sizes.items()}


@pytest.mark.parametrize("kind", ["plain", "plugin"])
async def test_each_key_fills_as_with_one_worker(
    nats_url: str,
    redis_url: str,
    redis: Redis,
    stream: str,  # noqa: F811
    batch_stream: str,  # noqa: F811
    start_worker: StartWorker,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """4 processes, 5 keys at ~20 items/s each, batch_timeout 1 s: ~20 a batch.

    A round counted as one was full at batch_size 50, ten of each key,
    and the processes took the rounds in turn (keys a half of what one
    worker gives, or less).
    """
    producer = make_producer(monkeypatch, kind, nats_url, redis_url, stream, 30)
    await producer.startup()
    try:
        kiq: Any
        if kind == "plain":  # a worker moves it, naming its key
            kiq = AsyncKicker("collect", producer, {}).kiq
        else:  # the producer names the key
            kiq = batch_task(
                producer, task_name="collect", batch_size=50, batch_key=key_of
            )(_collect).kiq
        start_worker(
            ("--workers", "4"),
            batch_size=50,
            batch_timeout=1.0,
            wait_in_broker=1,
            keys=KEYS,
        )

        async def one_holds_the_slot() -> bool:
            return await batch_waiting(nats_url, batch_stream) == 1

        await eventually(one_holds_the_slot, 30, "a process waits for a batch")
        count = 400
        await send_steadily(kiq, count, 100)

        async def all_ran() -> bool:
            return await runs(redis, stream) == Counter(range(count))

        await eventually(all_ran, 45, "every item ran once")
        fills = await key_fills(redis, stream)
        assert len(fills) == KEYS
        # One worker: ~20 (20/s x 1 s); a round of 50 counted as one: 10.
        assert min(fills.values()) >= 0.75 * 20, fills
    finally:
        await producer.shutdown()


async def _collect(items: list[int]) -> list[int]:
    return items  # never runs here: the producer only sends
