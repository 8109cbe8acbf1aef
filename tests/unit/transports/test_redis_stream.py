"""The stream transport reads, acks, reclaims and sends as taskiq-redis would, in bulk.

A read is one plain ``XREADGROUP``, its reply as hiredis parsed it.
"""

import asyncio
import logging
import uuid
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import (
    AckableMessage,
    AsyncTaskiqTask,
    BrokerMessage,
    TaskiqDepends,
    TaskiqMessage,
)
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import (
    RedisAsyncResultBackend,
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

from taskiq_batching import BatchInfo, BatchingMiddleware, batch_task
from taskiq_batching.core.analysis import analyse
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports import (
    Transport,
    redis_common,
    redis_replies,
    redis_wire,
)
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_pending import Pending
from taskiq_batching.transports.redis_sender import StreamSender
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.helpers import Recorder, running_worker
from tests.unit.transports.conftest import CommandLog
from tests.unit.transports.fake_redis import split_commands

pytestmark = pytest.mark.timeout(30)

#: Brokers and backends speaking RESP2, then RESP3 (``fake``'s ``protocol``).
ON_BOTH_PROTOCOLS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])

URL = "redis://fake:6379/0"
GROUP = "taskiq"


def stream_broker(fake: dict[str, Any], **options: Any) -> RedisStreamBroker:
    options.setdefault("queue_name", "s")
    options.setdefault("xread_block", 10)
    return RedisStreamBroker(URL, **options, **fake)


async def started(broker: RedisStreamBroker) -> StreamTransport:
    """The broker's transport, its consumer group declared (from ``$``)."""
    await broker.startup()
    return StreamTransport(broker)


async def kick(broker: Any, payloads: list[bytes], queue: str | None = None) -> None:
    labels = {} if queue is None else {"queue_name": queue}
    for index, payload in enumerate(payloads):
        message = BrokerMessage(
            task_id=str(index), task_name="t", message=payload, labels=labels
        )
        await broker.kick(message)


def payloads(count: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


async def read_all(
    transport: StreamTransport, count: int, limit: int = 100
) -> list[list[Delivery]]:
    """Chunks until they hold ``count`` deliveries; an empty read means lost ones."""
    chunks: list[list[Delivery]] = []
    while (got := sum(len(c) for c in chunks)) < count:
        chunk = await transport.read(limit)
        if not chunk:
            pytest.fail(f"{got} of {count} entries delivered; the rest never came")
        chunks.append(chunk)
    return chunks


def flat(chunks: list[list[Delivery]]) -> list[Delivery]:
    return [delivery for chunk in chunks for delivery in chunk]


async def pending(redis: Any, stream: str = "s") -> int:
    return int((await redis.xpending(stream, GROUP))["pending"])


async def idle_by_id(redis: Any, stream: str = "s") -> dict[bytes, tuple[bytes, int]]:
    rows = await redis.xpending_range(stream, GROUP, min="-", max="+", count=1000)
    return {
        row["message_id"]: (row["consumer"], row["time_since_delivered"])
        for row in rows
    }


def test_it_is_a_transport(fake: dict[str, Any]) -> None:
    transport: Transport = StreamTransport(stream_broker(fake))
    assert transport.name == "redis-stream"
    assert transport.acknowledges
    assert transport.prefetch is None


def test_it_takes_the_brokers_settings(fake: dict[str, Any]) -> None:
    broker = stream_broker(
        fake,
        consumer_name="me",
        consumer_group_name="g",
        additional_streams={"extra": "0"},
        xread_count=7,
        xread_block=10_000,
        idle_timeout=30_000,
    )
    transport = StreamTransport(broker)
    assert (transport.group, transport.consumer) == ("g", "me")
    assert transport.ids == {"s": ">", "extra": "0"}
    assert transport.count == 7
    assert transport.block == 2000  # under redis-py's socket timeout
    assert transport.idle_ms == 30_000
    assert transport.reclaim_interval == 10.0
    assert StreamTransport(stream_broker(fake, idle_timeout=2000)).reclaim_interval == 1
    assert StreamTransport(stream_broker(fake, xread_count=None)).count == 100


# --- reading ----------------------------------------------------------------------


@ON_BOTH_PROTOCOLS
async def test_reads_honour_the_limit_and_keep_the_order(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    sent = payloads(25)
    await kick(broker, sent)
    chunks = await read_all(transport, 25, limit=7)
    assert [len(chunk) for chunk in chunks] == [7, 7, 7, 4]
    assert [d.data for d in flat(chunks)] == sent
    assert transport.outstanding == 25
    assert await pending(redis) == 25
    await broker.shutdown()


async def test_reads_never_take_more_than_the_brokers_count(
    fake: dict[str, Any],
) -> None:
    broker = stream_broker(fake, xread_count=4)
    transport = await started(broker)
    await kick(broker, payloads(10))
    chunks = await read_all(transport, 10, limit=100)
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]
    await broker.shutdown()


async def test_a_read_is_one_plain_xreadgroup_packed_by_hand(
    fake: dict[str, Any],
    redis: Any,
    commands: CommandLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = stream_broker(fake, xread_block=1500)
    transport = await started(broker)
    sent = payloads(150)
    await kick(broker, sent)
    trips: list[bytes] = []
    real = redis_wire.round_trip

    async def round_trip(client: Any, packed: Any, replies: int) -> list[Any]:
        packed = list(packed)
        trips.extend(packed)
        return await real(client, packed, replies)

    monkeypatch.setattr(redis_replies, "round_trip", round_trip)
    commands.clear()
    chunks = await read_all(transport, 150)
    assert [len(chunk) for chunk in chunks] == [100, 50]
    assert [d.data for d in flat(chunks)] == sent
    # No script, and no XREADGROUP through redis-py's command API.
    for name in ("XREADGROUP", "EVALSHA", "EVAL", "SCRIPT"):
        assert not commands.named(name)
    reads, rest = split_commands(b"".join(trips))
    assert not rest
    assert len(reads) == 2
    for args in reads:  # waits when nothing does, answers at once otherwise
        assert [arg.decode() for arg in args] == [
            "XREADGROUP",
            "GROUP",
            GROUP,
            transport.consumer,
            "COUNT",
            "100",
            "BLOCK",
            "1500",
            "STREAMS",
            "s",
            ">",
        ]
    await transport.ack([d.handle for d in flat(chunks)])
    assert await pending(redis) == 0
    await broker.shutdown()


async def test_an_idle_stream_gives_an_empty_read_then_new_entries(
    fake: dict[str, Any],
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    assert await transport.read(10) == []
    await kick(broker, [b"late"])
    assert [d.data for d in await transport.read(10)] == [b"late"]
    await broker.shutdown()


@ON_BOTH_PROTOCOLS
async def test_additional_streams_are_read_with_their_own_handles(
    fake: dict[str, Any],
) -> None:
    broker = stream_broker(fake, additional_streams={"s2": ">"})
    transport = await started(broker)
    await kick(broker, payloads(3))
    await kick(broker, payloads(2, "x"), queue="s2")
    deliveries = flat(await read_all(transport, 5))
    by_stream: dict[str, list[bytes]] = {"s": [], "s2": []}
    for delivery in deliveries:
        stream, _ = delivery.handle
        by_stream[stream].append(delivery.data)
    assert by_stream == {"s": payloads(3), "s2": payloads(2, "x")}
    await broker.shutdown()


@pytest.mark.parametrize(
    "reply",
    [
        # as hiredis parsed it, RESP2: [[stream, [[id, [field, value, ...]]]]]
        [[b"s", [[b"1-0", [b"data", b"a"]], [b"2-0", [b"x", b"1", b"data", b"b"]]]]],
        # redis-py, RESP2: [[stream, [(id, {field: value})]]]
        [[b"s", [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]]],
        # redis-py, RESP3: {stream: [[(id, {field: value})]]}
        {b"s": [[(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]]},
        # redis-py, unified: {stream: [(id, {field: value})]}
        {"s": [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})]},
        # as hiredis parsed it, RESP3: {stream: [[id, [field, value, ...]]]}
        {b"s": [[b"1-0", [b"data", b"a"]], [b"2-0", [b"x", b"1", b"data", b"b"]]]},
    ],
    ids=["raw-resp2", "resp2", "resp3", "unified", "raw-resp3"],
)
def test_every_reply_shape_gives_the_same_deliveries(
    fake: dict[str, Any], reply: Any
) -> None:
    transport = StreamTransport(stream_broker(fake))
    chunk = transport._deliveries(reply)
    assert [(d.data, d.handle) for d in chunk] == [
        (b"a", ("s", b"1-0")),
        (b"b", ("s", b"2-0")),
    ]
    assert transport.outstanding == 2


@pytest.mark.parametrize(
    "reply",
    [
        [[b"s", [[b"1-0", [b"data", b"only"]]]]],
        [[b"s", [(b"1-0", {b"data": b"only"})]]],
        {b"s": [[(b"1-0", {b"data": b"only"})]]},
    ],
    ids=["raw", "resp2", "resp3"],
)
def test_a_reply_of_one_entry_is_read_as_one_entry(
    fake: dict[str, Any], reply: Any
) -> None:
    transport = StreamTransport(stream_broker(fake))
    chunk = transport._deliveries(reply)
    assert [(d.data, d.handle) for d in chunk] == [(b"only", ("s", b"1-0"))]


def test_an_entry_without_data_is_delivered_empty_for_taskiq_to_reject(
    fake: dict[str, Any],
) -> None:
    transport = StreamTransport(stream_broker(fake))
    raw = [[b"s", [[b"1-0", [b"other", b"x"]], [b"2-0", [b"data", b"ok"]]]]]
    deleted = [[b"s", [(None, None), (b"3-0", None)]]]
    assert [d.data for d in transport._deliveries(raw)] == [b"", b"ok"]
    assert [d.data for d in transport._deliveries(deleted)] == [b""]
    assert transport._deliveries(None) == []
    assert transport._deliveries([]) == []


async def test_a_lost_read_is_retried_after_a_pause(
    fake: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_common, "RETRY_DELAY", 0.001)
    broker = stream_broker(fake)
    transport = await started(broker)
    await kick(broker, [b"m"])
    real = transport.reads.read
    failures = [RedisConnectionError("gone"), TimeoutError("slow")]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await real(*args, **kwargs)

    monkeypatch.setattr(transport.reads, "read", flaky)
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        assert [d.data for d in await transport.read(10)] == [b"m"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reading s failed" in m for m in messages) == 2
    assert "ConnectionError: gone" in caplog.text
    assert sum("Redis answers again" in m for m in messages) == 1
    await broker.shutdown()


# --- a lost consumer group ----------------------------------------------------------


@pytest.mark.parametrize("lost", ["group", "stream"])
async def test_a_lost_group_is_created_again_and_reading_goes_on(
    lost: str,
    fake: dict[str, Any],
    redis: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    await kick(broker, payloads(3))
    first = flat(await read_all(transport, 3))
    await transport.ack([d.handle for d in first])
    if lost == "group":
        await redis.xgroup_destroy("s", GROUP)
    else:
        await redis.delete("s")
    await kick(broker, payloads(2, "after"))
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        again = flat(await read_all(transport, 2))
    assert [d.data for d in again] == payloads(2, "after")
    assert f"consumer group {GROUP} was missing" in caplog.text
    assert "NOGROUP" in caplog.text
    assert await pending(redis) == 2
    await broker.shutdown()


@pytest.mark.parametrize("consumer_id", ["$", "0"])
async def test_a_group_missing_at_the_first_read_is_created_at_the_streams_start(
    fake: dict[str, Any], consumer_id: str
) -> None:
    # Never at "$": the group may have been lost after the broker's startup
    # made it (issue 18), and the entries sent meanwhile would be skipped.
    broker = stream_broker(fake, consumer_id=consumer_id)
    await kick(broker, [b"before"])  # (fakeredis words NOGROUP differently
    transport = StreamTransport(broker)  # for a stream that does not exist)
    assert [d.data for d in await transport.read(10)] == [b"before"]
    await kick(broker, [b"after"])
    assert [d.data for d in await transport.read(10)] == [b"after"]
    await broker.shutdown()


# --- stopping a read ----------------------------------------------------------------


async def test_interrupting_a_finished_read_returns_what_it_read(
    fake: dict[str, Any],
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    await kick(broker, payloads(2))
    reading = asyncio.ensure_future(transport.read(10))
    await asyncio.wait({reading})
    assert [d.data for d in await transport.interrupt(reading)] == payloads(2)
    await broker.shutdown()


@ON_BOTH_PROTOCOLS
async def test_interrupting_recovers_entries_a_cancelled_read_took(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake, xread_block=2000)
    transport = await started(broker)
    await kick(broker, [b"known"])
    known = await transport.read(10)
    # Entries XREADGROUP gave this consumer, whose reply never arrived.
    await kick(broker, payloads(3, "lost"))
    await redis.xreadgroup(GROUP, transport.consumer, {"s": ">"}, count=10)
    reading = asyncio.ensure_future(transport.read(10))  # blocks: nothing new
    done, _ = await asyncio.wait({reading}, timeout=0.05)
    assert not done
    recovered = await asyncio.wait_for(transport.interrupt(reading), 5)
    assert reading.cancelled()
    assert [d.data for d in recovered] == payloads(3, "lost")
    assert transport.outstanding == 4
    await transport.ack([d.handle for d in known + recovered])
    assert await pending(redis) == 0
    await broker.shutdown()


class GatedXack:
    """Holds every XACK of a transport until ``gate`` opens: an ack in flight."""

    def __init__(self, pending: Pending, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = pending.xack
        self.sending = asyncio.Event()
        self.gate = asyncio.Event()
        monkeypatch.setattr(pending, "xack", self.xack)

    async def xack(self, *args: Any) -> Any:
        self.sending.set()
        await self.gate.wait()
        return await self.real(*args)


async def test_an_entry_whose_ack_is_in_flight_is_not_recovered_at_a_stop(
    fake: dict[str, Any], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain task finishes (its ack sent, not yet done by Redis) just as
    # the worker stops: the stop's read of this consumer's pending entries
    # still finds its entry, which must not come back as never seen (it
    # would run a second time as the Receiver's late delivery).
    broker = stream_broker(fake, xread_block=2000)
    transport = await started(broker)
    await kick(broker, [b"running"])
    (running,) = await transport.read(10)
    gated = GatedXack(transport.pending, monkeypatch)
    acking = asyncio.ensure_future(transport.ack([running.handle]))
    await asyncio.wait_for(gated.sending.wait(), 5)
    reading = asyncio.ensure_future(transport.read(10))
    recovered = await asyncio.wait_for(transport.interrupt(reading), 5)
    assert recovered == []
    gated.gate.set()
    await asyncio.wait_for(acking, 5)
    assert await pending(redis) == 0
    assert transport.outstanding == 0
    await broker.shutdown()


# --- acks -------------------------------------------------------------------------


async def test_acks_are_one_xack_per_stream(
    fake: dict[str, Any], redis: Any, commands: CommandLog
) -> None:
    broker = stream_broker(fake, additional_streams={"s2": ">"})
    transport = await started(broker)
    await kick(broker, payloads(3))
    await kick(broker, payloads(2, "x"), queue="s2")
    deliveries = flat(await read_all(transport, 5))
    commands.clear()
    await transport.ack([d.handle for d in deliveries])
    acks = commands.named("XACK")
    assert sorted((args[0], len(args) - 2) for args in acks) == [("s", 3), ("s2", 2)]
    assert await pending(redis, "s") == await pending(redis, "s2") == 0
    assert transport.outstanding == 0
    await broker.shutdown()


class Sent:
    """The XACKs a transport's ``Pending`` sends: (stream, ids) each."""

    def __init__(self, pending: Pending, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = pending.xack
        self.xacks: list[tuple[str, int]] = []
        monkeypatch.setattr(pending, "xack", self.xack)

    async def xack(self, stream: str, ids: list[bytes]) -> None:
        self.xacks.append((stream, len(ids)))
        await self.real(stream, ids)


async def test_a_single_streams_acks_are_one_xack(
    fake: dict[str, Any],
    redis: Any,
    commands: CommandLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    await kick(broker, payloads(4))
    deliveries = flat(await read_all(transport, 4))
    commands.clear()
    sent = Sent(transport.pending, monkeypatch)
    await transport.ack([d.handle for d in deliveries[:3]])
    assert sent.xacks == [("s", 3)]  # one, packed by hand: not redis-py's
    assert commands.named("XACK") == []
    assert await pending(redis) == 1
    assert transport.outstanding == 1
    await broker.shutdown()


async def test_a_delivery_for_taskiqs_receiver_acks_its_own_entry(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake)
    transport = await started(broker)
    await kick(broker, payloads(2))
    first, second = flat(await read_all(transport, 2))
    handed = transport.for_receiver(first)
    assert isinstance(handed, AckableMessage)
    assert handed.data == b"m0"
    await handed.ack()  # type: ignore[misc]
    rows = await idle_by_id(redis)
    assert list(rows) == [second.handle[1]]
    assert transport.outstanding == 1
    await broker.shutdown()


# --- releasing and reclaiming -------------------------------------------------------


@ON_BOTH_PROTOCOLS
async def test_released_entries_are_claimable_at_once(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, payloads(3))
    kept, *given_back = flat(await read_all(transport, 3))
    await transport.release(given_back)
    assert transport.outstanding == 1
    rows = await idle_by_id(redis)
    for delivery in given_back:
        assert rows[delivery.handle[1]][1] >= 60_000
    assert rows[kept.handle[1]][1] < 60_000
    other = StreamTransport(stream_broker(fake, idle_timeout=60_000))
    claimed = await other.reclaim()
    assert [d.data for d in claimed] == [d.data for d in given_back]
    assert {row[0] for row in (await idle_by_id(redis)).values()} == {
        transport.consumer.encode(),
        other.consumer.encode(),
    }
    await broker.shutdown()


async def dead_consumer_took(
    redis: Any, count: int, idle: int = 600_000
) -> list[bytes]:
    """Entries a consumer read and never acked, idle for ``idle`` ms."""
    reply = await redis.xreadgroup(GROUP, "dead", {"s": ">"}, count=count)
    ids = [entry_id for entry_id, _ in reply[0][1]]
    await redis.xclaim(
        "s", GROUP, "dead", min_idle_time=0, message_ids=ids, idle=idle, justid=True
    )
    return ids


@ON_BOTH_PROTOCOLS
async def test_reclaiming_takes_every_dead_entry_once_then_nothing(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake, xread_count=10, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, payloads(35))
    await dead_consumer_took(redis, 35)
    claimed: list[Delivery] = []
    for _ in range(10):
        chunk = await transport.reclaim()
        if not chunk:
            break
        claimed.extend(chunk)
    assert [d.data for d in claimed] == payloads(35)
    assert await transport.reclaim() == []
    assert transport.outstanding == 35
    owners = {row[0] for row in (await idle_by_id(redis)).values()}
    assert owners == {transport.consumer.encode()}
    await broker.shutdown()


async def test_one_reclaim_sweeps_every_page(fake: dict[str, Any], redis: Any) -> None:
    broker = stream_broker(fake, xread_count=10, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, payloads(35))
    await dead_consumer_took(redis, 35)
    claimed = await transport.reclaim()
    await broker.shutdown()
    assert [d.data for d in claimed] == payloads(35)


async def test_reclaiming_never_returns_this_transports_own_entries(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake, xread_count=2, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, payloads(4, "own"))
    own = flat(await read_all(transport, 4))
    # Held so long (a long batch) that they look dead too.
    await redis.xclaim(
        "s",
        GROUP,
        transport.consumer,
        min_idle_time=0,
        message_ids=[d.handle[1] for d in own],
        idle=600_000,
        justid=True,
    )
    await kick(broker, payloads(3, "dead"))
    await dead_consumer_took(redis, 3)
    claimed: list[Delivery] = []
    for _ in range(10):
        chunk = await transport.reclaim()
        if not chunk:
            break
        claimed.extend(chunk)
    assert [d.data for d in claimed] == payloads(3, "dead")
    assert transport.outstanding == 7
    await transport.ack([d.handle for d in own + claimed])
    assert await pending(redis) == 0
    await broker.shutdown()


async def test_an_idle_entry_whose_ack_is_in_flight_is_not_claimed(
    fake: dict[str, Any], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = stream_broker(fake, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, [b"held"])
    (held,) = await transport.read(10)
    # Held so long that it looks dead, and acked as the sweep runs.
    await redis.xclaim(
        "s",
        GROUP,
        transport.consumer,
        min_idle_time=0,
        message_ids=[held.handle[1]],
        idle=600_000,
        justid=True,
    )
    gated = GatedXack(transport.pending, monkeypatch)
    acking = asyncio.ensure_future(transport.ack([held.handle]))
    await asyncio.wait_for(gated.sending.wait(), 5)
    assert await transport.reclaim() == []
    gated.gate.set()
    await asyncio.wait_for(acking, 5)
    assert await pending(redis) == 0
    await broker.shutdown()


async def test_an_entry_deleted_meanwhile_is_acked_not_delivered(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = stream_broker(fake, idle_timeout=1000)
    transport = StreamTransport(broker)
    acked: list[tuple[Any, ...]] = []

    async def xautoclaim(*args: Any, **kwargs: Any) -> Any:
        # Redis 6.2 returns a deleted entry with no fields.
        return [b"0-0", [(b"1-0", None), (b"2-0", {b"data": b"m"})], []]

    async def xack(*args: Any) -> int:
        acked.append(args)
        return 1

    monkeypatch.setattr(transport.client.redis, "xautoclaim", xautoclaim)
    monkeypatch.setattr(transport.client.redis, "xack", xack)
    claimed = await transport.reclaim()
    assert [(d.data, d.handle) for d in claimed] == [(b"m", ("s", b"2-0"))]
    assert acked == [("s", GROUP, b"1-0")]
    assert transport.outstanding == 1


async def test_reclaim_logs_what_it_claimed(
    fake: dict[str, Any], redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    broker = stream_broker(fake, idle_timeout=60_000)
    transport = await started(broker)
    await kick(broker, payloads(3))
    await dead_consumer_took(redis, 3)
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        assert len(await transport.reclaim()) == 3
    assert "claimed 3 message(s) idle for over 60000 ms" in caplog.text
    await broker.shutdown()


# --- sending ------------------------------------------------------------------------


async def test_send_writes_what_kick_writes(fake: dict[str, Any], redis: Any) -> None:
    broker = stream_broker(fake, maxlen=3, approximate=False)
    sender = StreamSender(broker)
    messages = [
        BrokerMessage(
            task_id=str(i), task_name="t", message=f"m{i}".encode(), labels={}
        )
        for i in range(5)
    ]
    routed = BrokerMessage(
        task_id="r", task_name="t", message=b"r", labels={"queue_name": "elsewhere"}
    )
    await sender.send([*messages, routed])
    by_send = await redis.xrange("s")
    elsewhere = await redis.xrange("elsewhere")
    await redis.delete("s", "elsewhere")
    for message in [*messages, routed]:
        await broker.kick(message)
    by_kick = await redis.xrange("s")
    assert [fields for _, fields in by_send] == [fields for _, fields in by_kick]
    assert [fields for _, fields in by_send] == [
        {b"data": f"m{i}".encode()} for i in (2, 3, 4)
    ]
    assert [fields for _, fields in elsewhere] == [{b"data": b"r"}]
    await broker.shutdown()


# --- checking the broker's settings -------------------------------------------------


async def handler(items: list[int]) -> None: ...


def spec(batch_timeout: float | None, timeout: float | None = None) -> BatchSpec:
    return BatchSpec(
        task_name="tasks:handler",
        settings=BatchSettings(batch_size=10, batch_timeout=batch_timeout),
        signature=analyse("tasks:handler", handler),
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("idle_timeout", "warned"),
    [(60_000, False), (5000, False), (4999, True), (2000, True)],
)
def test_an_idle_timeout_too_short_to_refresh_held_entries_is_warned_of(
    fake: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    idle_timeout: int,
    warned: bool,
) -> None:
    """However long a task holds a message (size-only, long batches), its entry
    is refreshed; only a short idle_timeout leaves too little margin."""
    transport = StreamTransport(stream_broker(fake, idle_timeout=idle_timeout))
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        transport.check([spec(None), spec(60.0, timeout=20)])
    if not warned:
        assert not caplog.records
    else:
        (record,) = caplog.records
        assert f"idle_timeout={idle_timeout} ms" in record.getMessage()
        assert f"refreshed every {idle_timeout / 2000:g} s" in record.getMessage()


# --- sentinel and cluster brokers ----------------------------------------------------


async def test_a_sentinel_brokers_transport_asks_the_sentinels_for_the_master() -> None:
    broker = RedisStreamSentinelBroker(
        sentinels=[("localhost", 26379)], master_name="m"
    )
    transport = StreamTransport(broker)
    assert transport.client._owned
    await transport.close()


def test_a_cluster_brokers_transport_uses_the_brokers_client() -> None:
    broker = RedisStreamClusterBroker("redis://localhost:7000")
    transport = StreamTransport(broker)
    assert transport.client.redis is broker.redis
    assert transport.client.cluster
    assert not transport.client._owned


# --- on a worker ------------------------------------------------------------------


def worker_broker(
    fake: dict[str, Any], serializer: Any = None, **options: Any
) -> RedisStreamBroker:
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        URL, serializer=serializer, **fake
    )
    broker = stream_broker(fake, **options)
    if serializer is not None:
        broker = broker.with_serializer(serializer)
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


@ON_BOTH_PROTOCOLS
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_every_message_gets_its_batch_result_on_a_worker(
    fake: dict[str, Any], redis: Any, serializer: str
) -> None:
    chosen = JSONSerializer() if serializer == "json" else MSGPackSerializer()
    broker = worker_broker(fake, chosen)
    seen = Recorder()

    @batch_task(broker, batch_size=50, batch_timeout=5)
    async def total(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        seen.record(items, info)
        return sum(items)

    await broker.startup()  # as a producer would: declares the stream group
    async with running_worker(broker):
        sent = [await total.kiq(i) for i in range(300)]
        results = [await task.wait_result(timeout=10) for task in sent]
    assert seen.sizes == [50] * 6
    for index, result in enumerate(results):
        assert not result.is_err
        assert result.return_value == sum(seen.batches[index // 50])
    assert await pending(redis) == 0


async def test_a_worker_reclaims_a_dead_consumers_entries_without_new_traffic(
    fake: dict[str, Any], redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    broker = worker_broker(fake, idle_timeout=200)
    seen = Recorder()

    @batch_task(broker, batch_size=5, batch_timeout=0.05)
    async def handler(items: list[int]) -> int:
        seen.record(items)
        return sum(items)

    await broker.startup()
    # A worker that read three messages and died before acking them.
    sent = []
    for item in (1, 2, 3):
        message = TaskiqMessage(
            task_id=uuid.uuid4().hex,
            task_name=handler.task_name,
            labels={},
            args=[item],
            kwargs={},
        )
        sent.append(message.task_id)
        await redis.xadd("s", {b"data": broker.formatter.dumps(message).message})
    await dead_consumer_took(redis, 3)
    caplog.set_level(logging.WARNING, "taskiq_batching")
    async with running_worker(broker):
        for task_id in sent:
            task = AsyncTaskiqTask(task_id, broker.result_backend)
            assert (await task.wait_result(timeout=10)).return_value == 6
    assert seen.batches == [[1, 2, 3]]
    assert await pending(redis) == 0
    assert "claimed 3 message(s)" in caplog.text


async def test_a_stream_made_again_with_the_same_ids_is_read_from_its_start(
    fake: dict[str, Any], redis: Any
) -> None:
    # Deleted and made again within one millisecond, a stream's new entries
    # can carry the ids of those already read: none of them may be skipped.
    broker = stream_broker(fake)
    transport = await started(broker)
    for n in range(3):
        await redis.xadd("s", {"data": b"old-%d" % n}, id=f"5-{n}")
    first = flat(await read_all(transport, 3))
    await transport.ack([d.handle for d in first])
    await redis.delete("s")
    for n in range(3):
        await redis.xadd("s", {"data": b"new-%d" % n}, id=f"5-{n}")
    again = flat(await read_all(transport, 3))
    assert [d.data for d in again] == [b"new-0", b"new-1", b"new-2"]
    # Only the group lost: reading goes on after the last entry read.
    await transport.ack([d.handle for d in again])
    await redis.xgroup_destroy("s", GROUP)
    await redis.xadd("s", {"data": b"later"}, id="6-0")
    assert [d.data for d in await transport.read(10)] == [b"later"]
    await broker.shutdown()
