"""Batched messages wait in Redis and are taken whole (``redis_batches``).

What only streams do: what they do as lists do is tested on both in
``test_redis_batches_kinds``. A source takes batches with the take
script, as a worker's taker loop would.
"""

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import TaskiqMessage, TaskiqMiddleware

from taskiq_batching.core.broker_keys import broker_key
from taskiq_batching.errors import SendManyError
from taskiq_batching.transports.redis_batches import entry_ms
from tests.integration.stream_batches import (
    clean,
    declare,
    make_broker,
    run_sources,
    source,
    spec_of,
    stream_sources,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def queue_prefix() -> str:
    return "tb-sb"


on_both_protocols = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


async def test_full_batches_when_redis_does_not_know_the_lag(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 50, 30)
    producer = make_broker(redis_url, queue)
    task = declare(producer, 50, 30)
    try:
        stream = src.names.stream("-")
        await redis.xgroup_create(stream, src.transport.group, "0", mkstream=True)
        await task.kiq_many(range(120))
        entries: Any = await redis.xrange(stream, count=20)
        await redis.xdel(stream, *[entry_id for entry_id, _ in entries[5:15]])
        (group,) = await redis.xinfo_groups(stream)
        assert group["lag"] is None  # the case under test
        first = await src.batches.take(src.spec, 1)
        second = await src.batches.take(src.spec, 1)
        third = await src.batches.take(src.spec, 1)
        assert [len(t.batches[0].deliveries) for t in (first, second)] == [50, 50]
        assert {t.batches[0].reason for t in (first, second)} == {"size"}
        assert third.batches == []  # 10 wait for their deadline
        assert third.wait_seconds is not None
        assert third.wait_seconds > 20
    finally:
        await clean(redis, src.names, queue)


async def test_a_lost_group_is_made_again_where_nothing_sent_since_is_skipped(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 5, 30)
    producer = make_broker(redis_url, queue)
    task = declare(producer, 5, 30)
    try:
        first = await task.kiq_many(range(5))
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == [t.task_id for t in first]
        await src.transport.ack([d.handle for d in got.batches[0].deliveries])
        stream = src.names.stream("-")
        await redis.xgroup_destroy(stream, src.transport.group)  # the loss
        after = await task.kiq_many(range(5, 10))
        got = await src.batches.take(src.spec, 1)
        # Everything sent after the loss, and nothing acked before it.
        assert task_ids(got.batches[0]) == [t.task_id for t in after]
        await src.transport.ack([d.handle for d in got.batches[0].deliveries])
        # A Redis restarted empty: the streams and the set are gone.
        await clean(redis, src.names, queue)
        again = await task.kiq_many(range(10, 15))
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == [t.task_id for t in again]
    finally:
        await clean(redis, src.names, queue)


@on_both_protocols
async def test_forwarding_keeps_the_send_time_and_acks_the_original_in_one_multi(
    redis_url: str,
    queue: str,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    protocol: int,
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 100, 0.3, protocol)
    plain = make_broker(redis_url, queue, wait=False)
    task = declare(plain, 100, 0.3)
    try:
        # The main stream's group, as a worker's startup makes it (a first
        # read would make it too, after blocking on the empty stream).
        await redis.xgroup_create(queue, src.transport.group, "0", mkstream=True)
        sent = await task.kiq(1)  # a plain message, on the main stream
        (delivery,) = await src.transport.read(10)
        original_ms = entry_ms(delivery.handle[1])
        transactions: list[tuple[Any, list[str]]] = []
        pipeline = src.transport.client.redis.pipeline

        def recording(transaction: Any = True, **options: Any) -> Any:
            pipe = pipeline(transaction=transaction, **options)
            execute = pipe.execute

            async def run(*args: Any, **kwargs: Any) -> Any:
                names = [str(c[0][0]) for c in pipe.command_stack]
                transactions.append((transaction, names))
                return await execute(*args, **kwargs)

            pipe.execute = run
            return pipe

        monkeypatch.setattr(src.transport.client.redis, "pipeline", recording)
        await asyncio.sleep(0.2)  # forwarded 0.2 s after the send
        await src.batches.forward([(delivery, src.spec, "-")])
        monkeypatch.undo()
        ((transaction, commands),) = transactions
        assert transaction is True
        assert commands == ["XADD", "ZADD", "XADD", "XACK"]
        assert delivery.handle not in src.transport._in_use
        pending = await redis.xpending(queue, src.transport.group)
        assert pending["pending"] == 0  # the original is acked
        found: Any = await redis.xrange(src.names.stream("-"))
        ((_, fields),) = found
        assert fields[b"t"] == str(original_ms).encode()
        await run_sources([src], 1)
        ((started, batch),) = src.taken
        assert task_ids(batch) == [sent.task_id]
        waited = started - original_ms / 1000
        assert 0.3 - src.batches.poll_seconds - 0.005 <= waited <= 0.45, waited
    finally:
        await clean(redis, src.names, queue)


async def test_given_back_entries_wait_again_with_their_send_time(
    redis_url: str, queue: str, redis: Redis
) -> None:
    (src,) = stream_sources(redis_url, queue, 1, 3, 30)
    producer = make_broker(redis_url, queue)
    task = declare(producer, 3, 30)
    try:
        await task.kiq_many(range(3))
        got = await src.batches.take(src.spec, 1)
        deliveries = got.batches[0].deliveries
        sent_ms = [d.handle.sent_ms for d in deliveries]
        await src.transport.release(deliveries)
        assert not src.transport._in_use
        again = await src.batches.take(src.spec, 1)
        assert task_ids(again.batches[0]) == task_ids(got.batches[0])
        assert [d.handle.sent_ms for d in again.batches[0].deliveries] == sent_ms
        await src.transport.ack([d.handle for d in again.batches[0].deliveries])
        assert await redis.xlen(src.names.stream("-")) == 0  # acked: deleted
        empty = await src.batches.take(src.spec, 1)
        assert empty.wait_seconds is None
        assert not await redis.exists(src.names.keys, src.names.stream("-"))
    finally:
        await clean(redis, src.names, queue)


async def test_a_dead_workers_running_batch_is_taken_over_after_idle_timeout(
    redis_url: str, queue: str, redis: Redis
) -> None:
    brokers = [make_broker(redis_url, queue, idle_ms=300) for _ in range(2)]
    dead, alive = (source(b, spec_of(declare(b, 4, 30))) for b in brokers)
    task = declare(make_broker(redis_url, queue), 4, 30)
    try:
        await task.kiq_many(range(4))
        taken = await dead.batches.take(dead.spec, 1)
        assert len(taken.batches[0].deliveries) == 4
        # It dies (its keep-fresh timer stops; the refresh itself is tested
        # above): once idle_timeout passes, the next take has its batch.
        await dead.transport.holding.stop()
        deadline = time.monotonic() + 10
        while True:
            got = await alive.batches.take(alive.spec, 1)
            if got.batches or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert task_ids(got.batches[0]) == task_ids(taken.batches[0])
        assert got.batches[0].reason == "timeout"
    finally:
        await alive.transport.holding.stop()
        await clean(redis, alive.names, queue)


async def test_a_live_holder_keeps_its_taken_entries_fresh(
    redis_url: str, queue: str, redis: Redis
) -> None:
    broker = make_broker(redis_url, queue, idle_ms=60_000)
    task = declare(broker, 3, 30)
    src = source(broker, spec_of(task))
    try:
        await task.kiq_many(range(3))
        got = await src.batches.take(src.spec, 1)
        took_at = time.time()
        assert src.transport.holding.leased  # a take alone starts the timer
        await asyncio.sleep(0.3)  # the entries idle that long...
        await src.transport.holding.tick()  # ...until the keep-fresh tick
        stream = src.names.stream("-")
        found: Any = await redis.xpending_range(
            stream, src.transport.group, "-", "+", 10
        )
        since_take_ms = (time.time() - took_at) * 1000
        assert len(found) == len(got.batches[0].deliveries) == 3
        for entry in found:
            assert entry["consumer"].decode() == src.transport.consumer
            assert entry["time_since_delivered"] <= since_take_ms - 250
    finally:
        await src.transport.holding.stop()
        await clean(redis, src.names, queue)


async def test_a_chunk_for_a_key_of_another_type_is_refused_whole(
    redis_url: str, queue: str, redis: Redis
) -> None:
    producer = make_broker(redis_url, queue)
    task = declare(producer, 10, 1)
    src = source(producer, spec_of(task))
    try:
        await redis.set(src.names.stream("-"), "not a stream")
        with pytest.raises(SendManyError) as raised:
            await task.kiq_many(range(3))
        assert raised.value.not_sent == [0, 1, 2]
        assert not await redis.exists(src.names.keys, src.names.wake)
    finally:
        await clean(redis, src.names, queue)


class Recording(TaskiqMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        message.labels["stamp"] = "pre"
        self.seen.append(f"pre:{message.task_id}")
        return message

    def post_send(self, message: TaskiqMessage) -> None:
        self.seen.append(f"post:{message.task_id}")


async def test_a_routed_kiq_sends_taskiqs_message_through_its_middlewares(
    redis_url: str, queue: str, redis: Redis
) -> None:
    producer = make_broker(redis_url, queue)
    recording = Recording()
    producer.add_middlewares(recording)
    task = declare(producer, 10, 1)
    src = source(producer, spec_of(task))
    try:
        one = await task.kiq(5, tenant="x")
        many = await task.kiq_many([6, 7], tenant="x")
        assert recording.seen == [
            f"{when}:{t.task_id}" for t in [one] for when in ("pre", "post")
        ] + [f"pre:{t.task_id}" for t in many] + [f"post:{t.task_id}" for t in many]
        members: Any = await redis.zrange(src.names.keys, 0, -1)
        (key,) = [k.decode() for k in members]
        found: Any = await redis.xrange(src.names.stream(key))
        messages = [producer.formatter.loads(fields[b"data"]) for _, fields in found]
        assert [m.task_id for m in messages] == [
            one.task_id,
            *(t.task_id for t in many),
        ]
        assert [m.args for m in messages] == [[5], [6], [7]]
        assert {m.kwargs["tenant"] for m in messages} == {"x"}
        assert {m.labels["stamp"] for m in messages} == {"pre"}
        assert all(set(fields) == {b"data"} for _, fields in found)
        # A worker forwarding a plain producer's copy names the same key.
        assert broker_key(messages[0].args[1:], messages[0].kwargs) == key
    finally:
        await clean(redis, src.names, queue)


async def test_batch_key_values_wait_under_their_own_keys(
    redis_url: str, queue: str, redis: Redis
) -> None:
    producer = make_broker(redis_url, queue)
    task = declare(producer, 10, 1, batch_key=lambda item: item % 2)
    src = source(producer, spec_of(task))
    try:
        await task.kiq_many(range(6))
        await task.kiq(7)
        members: Any = await redis.zrange(src.names.keys, 0, -1)
        keys = sorted(k.decode() for k in members)
        lengths = sorted([await redis.xlen(src.names.stream(k)) for k in keys])
        assert lengths == [3, 4]  # even items, odd items
    finally:
        await clean(redis, src.names, queue)
