"""What batched messages waiting in Redis do alike on streams and on lists.

Each test runs on a stream broker (``redis_batches``, on RESP2 and RESP3
where the reply's shape matters) and on a list broker
(``redis_list_batches``); what only one of them does is in
``test_stream_batches`` and ``test_list_batches``. Several sources on one
queue stand for a fleet of workers.
"""

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import BrokerMessage

from taskiq_batching.errors import SendManyError
from taskiq_batching.transports.redis_batches import entry_ms
from taskiq_batching.transports.redis_batches_lua import TAKE
from taskiq_batching.transports.redis_batches_names import TaskEntry
from taskiq_batching.transports.redis_list_batches import ListEntry, element_of
from taskiq_batching.transports.redis_list_batches_lua import LIST_TAKE
from tests.integration.stream_batches import (
    Source,
    all_ids,
    clean,
    declare,
    list_source,
    make_broker,
    make_list_broker,
    run_sources,
    source,
    spec_of,
    task_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

AnySource = Source[Any, Any]


async def _stream_oldest(redis: Redis, key: str) -> bytes:
    found: Any = await redis.xrange(key, count=1)
    ((_, fields),) = found
    return bytes(fields[b"data"])


async def _list_oldest(redis: Redis, key: str) -> bytes:
    return element_of(await redis.lindex(key, -1))[1]


@dataclass(frozen=True)
class Kind:
    """A broker kind: how to make its brokers and sources, and read its keys.

    :param broker: ``(url, queue, wait, protocol)``: a broker with the plugin.
    :param source: ``(broker, spec)``: one worker's source.
    :param length: the Redis command counting a key's messages.
    :param oldest: the data of a key's oldest message.
    :param take: the take script.
    :param handle: the type of a taken message's handle.
    :param sent_ms: when a taken message was sent, as Redis recorded it.
    :param protocol: the RESP version of a stream broker's client.
    """

    broker: Callable[[str, str, bool, int], Any]
    source: Callable[[Any, Any], AnySource]
    length: str
    oldest: Callable[[Redis, str], Any]
    take: str
    handle: type
    sent_ms: Callable[[Any], int]
    protocol: int = 2

    def make(self, url: str, queue: str, wait: bool = True) -> Any:
        return self.broker(url, queue, wait, self.protocol)

    async def count(self, redis: Redis, key: str) -> int:
        return int(await getattr(redis, self.length)(key))


STREAM = Kind(
    lambda url, queue, wait, protocol: make_broker(
        url, queue, wait=wait, protocol=protocol
    ),
    source,
    "xlen",
    _stream_oldest,
    TAKE,
    TaskEntry,
    lambda delivery: entry_ms(delivery.handle[1]),
)
LIST = Kind(
    lambda url, queue, wait, _: make_list_broker(url, queue, wait=wait),
    list_source,
    "llen",
    _list_oldest,
    LIST_TAKE,
    ListEntry,
    lambda delivery: int(delivery.handle.sent_ms),
)
STREAM_RESP3 = dataclasses.replace(STREAM, protocol=3)

on_both_kinds = pytest.mark.parametrize("kind", [STREAM, LIST], ids=["stream", "list"])


@pytest.fixture
def queue_prefix() -> str:
    return "tb-bk"


def _sources(
    kind: Kind, url: str, queue: str, count: int, size: int, timeout: float | None
) -> list[AnySource]:
    found = []
    for _ in range(count):
        broker = kind.make(url, queue)
        found.append(kind.source(broker, spec_of(declare(broker, size, timeout))))
    return found


def _one(kind: Kind, url: str, queue: str, size: int, timeout: float) -> Any:
    """A producer's task and a source on the same broker."""
    broker = kind.make(url, queue)
    task = declare(broker, size, timeout)
    return task, kind.source(broker, spec_of(task))


@pytest.mark.parametrize(
    "kind", [STREAM, STREAM_RESP3, LIST], ids=["stream-resp2", "stream-resp3", "list"]
)
async def test_three_sources_take_whole_batches_and_nothing_twice(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    sources = _sources(kind, redis_url, queue, 3, 50, 0.5)
    task = declare(kind.make(redis_url, queue), 50, 0.5)
    try:
        runner = asyncio.ensure_future(run_sources(sources, 260))
        sent: list[str] = []
        for start in range(0, 260, 20):
            sent += [t.task_id for t in await task.kiq_many(range(start, start + 20))]
        await runner
        assert sorted(all_ids(sources)) == sorted(sent)  # all, none twice
        batches = [b for s in sources for _, b in s.taken]
        assert sorted(len(b.deliveries) for b in batches) == [10, 50, 50, 50, 50, 50]
        assert {b.reason for b in batches if len(b.deliveries) == 50} == {"size"}
        for batch in batches:  # each in send order
            sent_ms = [kind.sent_ms(d) for d in batch.deliveries]
            assert sent_ms == sorted(sent_ms)
        assert await kind.count(redis, queue) == 0  # nothing on the main queue
    finally:
        await clean(redis, sources[0].names, queue)


@on_both_kinds
async def test_a_batch_is_taken_at_its_first_message_send_plus_the_timeout(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    (src,) = _sources(kind, redis_url, queue, 1, 100, 0.3)
    task = declare(kind.make(redis_url, queue), 100, 0.3)
    try:
        await task.kiq_many(range(10))
        # The worker comes 0.2 s after the send: a deadline counted from
        # its first read would fall at 0.5 s, past the bound below.
        await asyncio.sleep(0.2)
        await run_sources([src], 10)
        ((started, batch),) = src.taken
        waited = started - min(kind.sent_ms(d) for d in batch.deliveries) / 1000
        assert 0.3 - src.batches.poll_seconds - 0.005 <= waited <= 0.3 + 0.15, waited
        assert batch.reason == "timeout"
        assert len(batch.deliveries) == 10
        empty = await src.batches.take(src.spec, 1)
        assert empty.wait_seconds is None  # the empty key left the set
        assert not await redis.exists(src.names.keys, src.names.stream("-"))
    finally:
        await clean(redis, src.names, queue)


@on_both_kinds
async def test_kiq_and_kiq_many_send_to_the_tasks_keys(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    task, src = _one(kind, redis_url, queue, 10, 1)
    try:
        one = await task.kiq(1)
        await task.kiq_many(range(5))
        await task.kiq_many(range(3), tenant="a")
        await task.task.kicker().with_labels(queue_name=f"{queue}-other").kiq(2)
        names = src.names
        members: Any = await redis.zrange(names.keys, 0, -1)
        keys = [k.decode() for k in members]
        assert len(keys) == 2
        assert "-" in keys
        tenant = next(k for k in keys if k != "-")
        assert await kind.count(redis, names.stream("-")) == 6
        assert await kind.count(redis, names.stream(tenant)) == 3
        assert await redis.xlen(names.wake) == 1
        assert await kind.count(redis, queue) == 0
        assert await kind.count(redis, f"{queue}-other") == 1  # another queue
        oldest = await kind.oldest(redis, names.stream("-"))
        assert src.broker.formatter.loads(oldest).task_id == one.task_id
        plain = kind.make(redis_url, queue, wait=False)
        await declare(plain, 10, 1).kiq(7)
        assert await kind.count(redis, queue) == 1  # the switch off: main queue
    finally:
        await clean(redis, src.names, queue)


@on_both_kinds
async def test_a_chunk_sent_again_adds_nothing_and_a_wrong_key_refuses_it(
    redis_url: str,
    queue: str,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    kind: Kind,
) -> None:
    _, src = _one(kind, redis_url, queue, 10, 1)
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
        assert await kind.count(redis, src.names.stream("-")) == 3
        await redis.set(src.names.stream("b"), "not a list or stream")
        with pytest.raises(SendManyError) as raised:
            await src.batches.send(src.spec, messages, ["a", "b", "a"], once=True)
        assert raised.value.not_sent == [0, 1, 2]
        assert not await redis.exists(src.names.stream("a"))
    finally:
        await clean(redis, src.names, queue)


@on_both_kinds
async def test_one_take_gives_at_most_room_batches_each_of_another_key(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    task, src = _one(kind, redis_url, queue, 2, 30)
    try:
        for tenant in ("a", "b", "c"):
            await task.kiq_many(range(4), tenant=tenant)  # two batches each
        got = await src.batches.take(src.spec, 2)
        assert len(got.batches) == 2
        assert len({b.key for b in got.batches}) == 2
        assert got.wait_seconds == 0  # more are due now
        rest = await src.batches.take(src.spec, 10)
        assert len(rest.batches) == 3  # one per key: one each of a, b and c
        assert len({b.key for b in rest.batches}) == 3
        last = await src.batches.take(src.spec, 10)
        assert len(last.batches) == 1
        everything = [*got.batches, *rest.batches, *last.batches]
        assert all(len(b.deliveries) == 2 for b in everything)
        assert all(isinstance(d.handle, kind.handle) for d in everything[0].deliveries)
    finally:
        await clean(redis, src.names, queue)


@on_both_kinds
async def test_a_cancelled_take_gives_back_what_it_took(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    task, src = _one(kind, redis_url, queue, 3, 30)
    try:
        sent = [t.task_id for t in await task.kiq_many(range(3))]
        real = src.batches._take = src.batches.redis.register_script(kind.take)
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
        assert not getattr(src.transport, "_in_use", ())  # a stream's holdings
        got = await src.batches.take(src.spec, 1)
        assert task_ids(got.batches[0]) == sent
    finally:
        await clean(redis, src.names, queue)


@on_both_kinds
async def test_a_full_only_take_leaves_a_due_batch_for_a_worker_with_room(
    redis_url: str, queue: str, redis: Redis, kind: Kind
) -> None:
    """The taker's read-ahead (``full_only``) takes full batches only: one
    due by its timeout is left for a worker with a free slot."""
    task, src = _one(kind, redis_url, queue, 10, 0.001)  # due once sent
    try:
        sent = [t.task_id for t in await task.kiq_many(range(15))]
        ahead = await src.batches.take(src.spec, 2, full_only=True)
        assert [b.reason for b in ahead.batches] == ["size"]
        assert task_ids(ahead.batches[0]) == sent[:10]
        assert not (await src.batches.take(src.spec, 1, full_only=True)).batches
        due = await src.batches.take(src.spec, 1)
        assert [b.reason for b in due.batches] == ["timeout"]
        assert task_ids(due.batches[0]) == sent[10:]
    finally:
        await clean(redis, src.names, queue)
