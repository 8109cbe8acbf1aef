"""Batched messages wait in Redis lists and are taken whole (``redis_list_batches``).

The list brokers' side of what ``test_stream_batches`` shows for streams:
several sources on one list stand for a fleet of workers.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import BrokerMessage

from taskiq_batching.errors import SendManyError
from taskiq_batching.transports.redis_list_batches import ListEntry, element_of
from taskiq_batching.transports.redis_list_batches_lua import LIST_TAKE
from tests.integration.stream_batches import (
    ListSource,
    all_ids,
    clean,
    declare,
    list_source,
    make_list_broker,
    spec_of,
    take_until,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def queue() -> str:
    return f"tb-lb-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _sources(
    redis_url: str, queue: str, count: int, size: int, timeout: float | None
) -> list[ListSource]:
    found = []
    for _ in range(count):
        broker = make_list_broker(redis_url, queue)
        found.append(list_source(broker, spec_of(declare(broker, size, timeout))))
    return found


async def _run(sources: list[ListSource], until: int, timeout: float = 30) -> None:
    done = asyncio.Event()

    def taken() -> None:
        if len(all_ids(sources)) >= until:
            done.set()

    takers = [asyncio.ensure_future(take_until(s, done, taken)) for s in sources]
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        done.set()
        await asyncio.gather(*takers)


def _sent_ms(batch: Any) -> list[int]:
    return [d.handle.sent_ms for d in batch.deliveries]


async def test_three_sources_take_whole_batches_and_nothing_twice(
    redis_url: str, queue: str, redis: Redis
) -> None:
    sources = _sources(redis_url, queue, 3, 50, 0.5)
    task = declare(make_list_broker(redis_url, queue), 50, 0.5)
    try:
        runner = asyncio.ensure_future(_run(sources, 260))
        sent: list[str] = []
        for start in range(0, 260, 20):
            sent += [t.task_id for t in await task.kiq_many(range(start, start + 20))]
        await runner
        assert sorted(all_ids(sources)) == sorted(sent)  # all, none twice
        batches = [b for s in sources for _, b in s.taken]
        assert sorted(len(b.deliveries) for b in batches) == [10, 50, 50, 50, 50, 50]
        assert {b.reason for b in batches if len(b.deliveries) == 50} == {"size"}
        for batch in batches:  # each in send order
            assert _sent_ms(batch) == sorted(_sent_ms(batch))
        assert await redis.llen(queue) == 0  # nothing went to the main list
    finally:
        await clean(redis, sources[0].names, queue)


async def test_a_batch_is_taken_at_its_first_message_send_plus_the_timeout(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = _sources(redis_url, queue, 1, 100, 0.3)
    task = declare(make_list_broker(redis_url, queue), 100, 0.3)
    try:
        await task.kiq_many(range(10))
        # The worker comes 0.2 s after the send: a deadline counted from
        # its first read would fall at 0.5 s, past the bound below.
        await asyncio.sleep(0.2)
        await _run([src], 10)
        ((started, batch),) = src.taken
        waited = started - min(_sent_ms(batch)) / 1000
        assert 0.3 - src.batches.poll_seconds - 0.005 <= waited <= 0.3 + 0.15, waited
        assert batch.reason == "timeout"
        assert len(batch.deliveries) == 10
        empty = await src.batches.take(src.spec, 1)
        assert empty.wait_seconds is None  # the empty list left the set
        assert not await redis.exists(src.names.keys, src.names.stream("-"))
    finally:
        await clean(redis, src.names, queue)


async def test_forwarding_stamps_the_forward_time(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = _sources(redis_url, queue, 1, 100, 0.3)
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
        await _run([src], 1)
        ((started, batch),) = src.taken
        assert task_ids(batch) == [sent.task_id]
        waited = started - stamp / 1000  # from the forward, not the read
        assert 0.3 - src.batches.poll_seconds - 0.005 <= waited <= 0.45, waited
    finally:
        await clean(redis, src.names, queue)


async def test_given_back_messages_wait_again_at_the_head_with_their_time(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = _sources(redis_url, queue, 1, 3, 30)
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


async def test_kiq_and_kiq_many_send_to_the_tasks_lists_by_key(
    redis_url: str, queue: str, redis: Redis
) -> None:
    producer = make_list_broker(redis_url, queue)
    task = declare(producer, 10, 1)
    src = list_source(producer, spec_of(task))
    try:
        one = await task.kiq(1)
        await task.kiq_many(range(5))
        await task.kiq_many(range(3), tenant="a")
        await task.task.kicker().with_labels(queue_name=f"{queue}-other").kiq(2)
        names = src.names
        members: Any = await redis.zrange(names.keys, 0, -1)
        keys = [k.decode() for k in members]
        assert len(keys) == 2
        tenant = next(k for k in keys if k != "-")
        assert await redis.llen(names.stream("-")) == 6
        assert await redis.llen(names.stream(tenant)) == 3
        assert await redis.xlen(names.wake) == 1
        assert await redis.llen(queue) == 0
        assert await redis.llen(f"{queue}-other") == 1  # another queue: plain
        oldest = await redis.lindex(names.stream("-"), -1)
        assert producer.formatter.loads(element_of(oldest)[1]).task_id == one.task_id
        plain = make_list_broker(redis_url, queue, wait=False)
        await declare(plain, 10, 1).kiq(7)
        assert await redis.llen(queue) == 1  # the switch off: the main list
    finally:
        await clean(redis, src.names, queue)


async def test_a_chunk_sent_again_adds_nothing_and_a_wrong_key_refuses_it(
    redis_url: str, queue: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = make_list_broker(redis_url, queue)
    task = declare(producer, 10, 1)
    src = list_source(producer, spec_of(task))
    messages = [
        BrokerMessage(
            task_id=str(i), task_name="collect", message=b"m%d" % i, labels={}
        )
        for i in range(3)
    ]
    try:
        monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=1))
        for _ in range(2):  # the same marks twice: a retry of the same send
            await src.batches.send(src.spec, messages, ["-"] * 3, once=True)
        monkeypatch.undo()
        assert await redis.llen(src.names.stream("-")) == 3
        await redis.set(src.names.stream("b"), "not a list")
        with pytest.raises(SendManyError) as raised:
            await src.batches.send(src.spec, messages, ["a", "b", "a"], once=True)
        assert raised.value.not_sent == [0, 1, 2]
        assert not await redis.exists(src.names.stream("a"))
    finally:
        await clean(redis, src.names, queue)


async def test_one_take_gives_at_most_room_batches_each_of_another_key(
    redis_url: str, queue: str, redis: Redis
) -> None:
    broker = make_list_broker(redis_url, queue)
    task = declare(broker, 2, 30)
    src = list_source(broker, spec_of(task))
    try:
        for tenant in ("a", "b", "c"):
            await task.kiq_many(range(4), tenant=tenant)  # two batches each
        got = await src.batches.take(src.spec, 2)
        assert len(got.batches) == 2
        assert len({b.key for b in got.batches}) == 2
        assert got.wait_seconds == 0  # more are due now
        rest = await src.batches.take(src.spec, 10)
        assert len(rest.batches) == 3  # one per key
        assert len({b.key for b in rest.batches}) == 3
        last = await src.batches.take(src.spec, 10)
        assert len(last.batches) == 1
        everything = [*got.batches, *rest.batches, *last.batches]
        assert all(len(b.deliveries) == 2 for b in everything)
        assert all(isinstance(d.handle, ListEntry) for d in everything[0].deliveries)
    finally:
        await clean(redis, src.names, queue)


async def test_a_cancelled_take_gives_back_what_it_took(
    redis_url: str, queue: str, redis: Redis
) -> None:
    broker = make_list_broker(redis_url, queue)
    task = declare(broker, 3, 30)
    src = list_source(broker, spec_of(task))
    try:
        sent = [t.task_id for t in await task.kiq_many(range(3))]
        real = src.batches._take = src.batches.redis.register_script(LIST_TAKE)
        ran, gate = asyncio.Event(), asyncio.Event()

        async def slow_reply(**options: Any) -> Any:
            reply = await real(**options)  # the server ran it...
            ran.set()
            await gate.wait()  # ...and its reply is on its way
            return reply

        src.batches._take = slow_reply
        taking = asyncio.ensure_future(src.batches.take(src.spec, 1))
        await ran.wait()
        taking.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await taking
        src.batches._take = real
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == sent
    finally:
        await clean(redis, src.names, queue)


async def test_a_message_without_a_stamp_is_due_at_once(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = _sources(redis_url, queue, 1, 10, 30)
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
