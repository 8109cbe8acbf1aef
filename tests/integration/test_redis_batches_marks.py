"""What a worker's take honours beyond size and timeout, on streams and lists.

* a message's ``batch_deadline`` marks its key: the key is taken when the
  mark comes, with reason ``deadline``, long before its ``batch_timeout``;
* a key whose short remainder a worker holds is taken at what it lacks
  (``needs``), not at ``batch_size``.
"""

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from taskiq_batching import deadline
from taskiq_batching.core.broker_keys import NO_KEY
from taskiq_batching.transports.batch_source import Taken
from tests.integration.stream_batches import (
    clean,
    declare,
    list_source,
    make_broker,
    make_list_broker,
    source,
    spec_of,
    task_ids,
)

KINDS = ["stream", "list"]


def _source(kind: str, redis_url: str, queue: str, size: int, timeout: float) -> Any:
    if kind == "stream":
        broker: Any = make_broker(redis_url, queue)
        return source(broker, spec_of(declare(broker, size, timeout)))
    broker = make_list_broker(redis_url, queue)
    return list_source(broker, spec_of(declare(broker, size, timeout)))


async def _take_until_taken(src: Any, needs: Any = None, within: float = 10) -> Taken:
    """Take as the taker loop does (sleeping what the take says) until a batch."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        taken: Taken = await src.batches.take(src.spec, 1, needs)
        if taken.batches:
            return taken
        await asyncio.sleep(min(taken.wait_seconds or 0.02, 0.02))
    raise AssertionError("nothing was taken")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_deadline_marks_its_key_and_the_key_is_taken_by_it(
    kind: str, redis_url: str, queue: str, redis: Redis
) -> None:
    src = _source(kind, redis_url, queue, 100, 60)
    producer = (make_broker if kind == "stream" else make_list_broker)(redis_url, queue)
    task = declare(producer, 100, 60)
    try:
        calm = await task.kiq(1)
        due = deadline(0.3)
        hurried = await task.kicker().with_labels(batch_deadline=due).kiq(2)
        first = await src.batches.take(src.spec, 1)
        assert first.batches == []  # not due: neither full nor at its timeout
        assert first.wait_seconds is not None
        assert first.wait_seconds < 1
        taken = await _take_until_taken(src)
        took_at = time.time()
        (batch,) = taken.batches
        assert batch.reason == "deadline"
        assert task_ids(batch) == [calm.task_id, hurried.task_id]
        # by the mark, less the take's slack; far before its 60 s timeout
        assert took_at >= due - src.batches.poll_seconds - 0.01
        assert took_at < due + 5
        assert await redis.zcard(src.names.due) == 0  # the mark is spent
    finally:
        await clean(redis, src.names, queue)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_key_with_a_short_remainder_is_taken_at_what_it_lacks(
    kind: str, redis_url: str, queue: str, redis: Redis
) -> None:
    src = _source(kind, redis_url, queue, 5, 60)
    producer = (make_broker if kind == "stream" else make_list_broker)(redis_url, queue)
    task = declare(producer, 5, 60)
    try:
        sent = [await task.kiq(n) for n in range(3)]
        assert (await src.batches.take(src.spec, 1)).batches == []  # 3 < 5
        taken = await src.batches.take(src.spec, 1, {NO_KEY: 2})
        (batch,) = taken.batches
        assert batch.reason == "size"
        assert task_ids(batch) == [t.task_id for t in sent[:2]]
    finally:
        await clean(redis, src.names, queue)
