"""Batched messages wait in Redis lists and are taken whole (``redis_list_batches``).

What only lists do: what they do as streams do is tested on both in
``test_redis_batches_kinds``.
"""

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from taskiq_batching.transports.redis_list_batches import ListEntry, element_of
from tests.integration.stream_batches import (
    clean,
    declare,
    list_sources,
    make_list_broker,
    run_sources,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-lb"


def _sent_ms(batch: Any) -> list[int]:
    return [d.handle.sent_ms for d in batch.deliveries]


async def test_forwarding_stamps_the_forward_time(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = list_sources(redis_url, queue, 1, 100, 0.3)
    plain = declare(make_list_broker(redis_url, queue, wait=False), 100, 0.3)
    try:
        sent = await plain.kiq(1)  # a plain message, on the main list
        (delivery,) = await src.transport.read(10)
        assert await redis.llen(queue) == 0
        before_ms = int(time.time() * 1000)
        await src.batches.forward([(delivery, src.spec, "-")])
        (element,) = await redis.lrange(src.names.stream("-"), 0, -1)
        stamp, data = element_of(element)
        assert data == delivery.data
        assert stamp is not None
        assert before_ms - 50 <= stamp <= int(time.time() * 1000) + 50
        await run_sources([src], 1)
        ((started, batch),) = src.taken
        assert task_ids(batch) == [sent.task_id]
        waited = started - stamp / 1000  # from the forward, not the read
        assert 0.3 - src.batches.poll_seconds - 0.005 <= waited <= 0.45, waited
    finally:
        await clean(redis, src.names, queue)


async def test_given_back_messages_wait_again_at_the_head_with_their_time(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = list_sources(redis_url, queue, 1, 3, 30)
    task = declare(make_list_broker(redis_url, queue), 3, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(5))]
        got = await src.batches.take(src.spec, 1)
        (batch,) = got.batches
        assert task_ids(batch) == sent[:3]
        await src.transport.release(batch.deliveries)
        assert await redis.llen(queue) == 0  # not the main list
        again = await src.batches.take(src.spec, 1)
        (batch_again,) = again.batches
        assert task_ids(batch_again) == sent[:3]  # the oldest, in order
        assert _sent_ms(batch_again) == _sent_ms(batch)
        # Released before they were taken again: none of them ran.
        await src.transport.release(batch_again.deliveries[2:])
        last = await src.batches.take(src.spec, 1)
        assert task_ids(last.batches[0]) == [sent[2], *sent[3:]]
    finally:
        await clean(redis, src.names, queue)


async def test_a_message_without_a_stamp_is_due_at_once(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = list_sources(redis_url, queue, 1, 10, 30)
    try:
        names = src.names
        await redis.lpush(names.stream("-"), b'{"not": "stamped"}')
        await redis.zadd(names.keys, {"-": 1})
        (batch,) = (await src.batches.take(src.spec, 1)).batches
        assert batch.reason == "timeout"
        assert [d.data for d in batch.deliveries] == [b'{"not": "stamped"}']
        assert isinstance(batch.deliveries[0].handle, ListEntry)
        assert batch.deliveries[0].handle.sent_ms == 0
    finally:
        await clean(redis, src.names, queue)
