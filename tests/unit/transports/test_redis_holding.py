"""A stream worker keeps the entries it holds fresh, and its consumer name its own.

On fakeredis; the real multi-process behaviour is in
``tests/integration/faults/test_stream_live_workers.py``.
"""

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import BrokerMessage
from taskiq_redis import RedisStreamBroker

from taskiq_batching.errors import ConsumerNameInUseError
from taskiq_batching.transports import redis_common, redis_holding
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_holding import lease_key
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.unit.transports.conftest import CommandLog

pytestmark = pytest.mark.timeout(30)

URL = "redis://fake:6379/0"
GROUP = "taskiq"


def stream_broker(fake: dict[str, Any], **options: Any) -> RedisStreamBroker:
    options.setdefault("queue_name", "s")
    options.setdefault("xread_block", 10)
    return RedisStreamBroker(URL, **options, **fake)


async def kick(broker: RedisStreamBroker, count: int) -> None:
    for index in range(count):
        await broker.kick(
            BrokerMessage(
                task_id=str(index), task_name="t", message=b"m%d" % index, labels={}
            )
        )


async def read(transport: StreamTransport, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < count:
        chunk = await transport.read(1000)
        assert chunk, f"{len(got)} of {count} entries came"
        got.extend(chunk)
    return got


async def make_idle(redis: Any, consumer: str, ids: list[bytes], idle: int) -> None:
    """As if nothing touched these entries for ``idle`` ms."""
    await redis.xclaim(
        "s", GROUP, consumer, min_idle_time=0, message_ids=ids, idle=idle, justid=True
    )


async def idle_of(redis: Any) -> dict[bytes, tuple[bytes, int]]:
    rows = await redis.xpending_range("s", GROUP, min="-", max="+", count=10_000)
    return {
        row["message_id"]: (row["consumer"], row["time_since_delivered"])
        for row in rows
    }


async def test_a_refresh_resets_the_idle_time_of_every_entry_still_held(
    fake: dict[str, Any], redis: Any, commands: CommandLog
) -> None:
    broker = stream_broker(fake, idle_timeout=60_000)
    await broker.startup()
    transport = StreamTransport(broker)
    await kick(broker, 4)
    held, acked, released, forgotten = await read(transport, 4)
    ids = [d.handle[1] for d in (held, acked, released, forgotten)]
    await transport.ack([acked.handle])
    await transport.release([released])
    transport.forget([forgotten])
    await make_idle(redis, transport.consumer, ids, 50_000)
    commands.clear()
    # lease + the mark (how far it read) + one XCLAIM, in one trip
    assert await transport.holding.tick() == 3
    rows = await idle_of(redis)
    assert rows[ids[0]][1] < 50_000  # held: fresh again
    assert rows[ids[2]][1] >= 50_000  # released: left claimable
    assert rows[ids[3]][1] >= 50_000  # forgotten: left to the broker's redelivery
    assert ids[1] not in rows
    (claim,) = commands.named("XCLAIM")
    assert ids[0] in claim
    assert b"JUSTID" in claim
    await transport.close()
    await broker.shutdown()


async def test_a_sibling_never_claims_entries_kept_fresh(
    fake: dict[str, Any], redis: Any
) -> None:
    """Held longer than idle_timeout (a long wait behind a batch), but refreshed."""
    broker = stream_broker(fake, idle_timeout=60_000)
    await broker.startup()
    holder = StreamTransport(broker)
    sibling = StreamTransport(stream_broker(fake, idle_timeout=60_000))
    await kick(broker, 3)
    held = await read(holder, 3)
    ids = [d.handle[1] for d in held]
    await make_idle(redis, holder.consumer, ids, 59_000)
    await holder.holding.tick()
    await make_idle(redis, holder.consumer, ids, 59_000)  # less than 2 x idle
    await holder.holding.tick()
    assert await sibling.reclaim() == []
    await holder.close()  # dead now: nothing refreshes them
    await make_idle(redis, holder.consumer, ids, 60_000)
    assert [d.handle for d in await sibling.reclaim()] == [d.handle for d in held]
    await sibling.close()
    await broker.shutdown()


async def test_many_held_entries_are_refreshed_in_chunks_in_one_round_trip(
    fake: dict[str, Any],
    redis: Any,
    commands: CommandLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_holding, "REFRESH_CHUNK", 10)
    broker = stream_broker(fake, idle_timeout=60_000)
    await broker.startup()
    transport = StreamTransport(broker)
    await kick(broker, 25)
    held = await read(transport, 25)
    await make_idle(redis, transport.consumer, [d.handle[1] for d in held], 50_000)
    commands.clear()
    assert await transport.holding.tick() == 5  # lease, mark, 3 XCLAIM
    assert [len(args) for args in commands.named("XCLAIM")] == [15, 15, 10]
    assert all(idle < 50_000 for _, idle in (await idle_of(redis)).values())
    await transport.close()
    await broker.shutdown()


async def test_held_entries_are_refreshed_on_a_timer(
    fake: dict[str, Any], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = stream_broker(fake, idle_timeout=200)  # refreshed every 0.1 s
    await broker.startup()
    transport = StreamTransport(broker)
    ticked = asyncio.Event()
    tick = transport.holding.tick

    async def observed_tick() -> int:
        sent = await tick()
        ticked.set()
        return sent

    monkeypatch.setattr(transport.holding, "tick", observed_tick)
    await kick(broker, 2)
    held = await read(transport, 2)
    await make_idle(redis, transport.consumer, [d.handle[1] for d in held], 10_000)
    for _ in range(2):  # the first may have been under way already
        ticked.clear()
        await asyncio.wait_for(ticked.wait(), 5)
    assert all(idle < 10_000 for _, idle in (await idle_of(redis)).values())
    await transport.close()
    await broker.shutdown()


async def test_a_second_process_with_a_live_processs_consumer_name_refuses(
    fake: dict[str, Any], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_holding, "LEASE_MARGIN", 0.05)
    broker = stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    await broker.startup()
    first = StreamTransport(broker)
    await first.read(10)  # leased, renewed every 0.1 s
    second = StreamTransport(
        stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    )
    with pytest.raises(ConsumerNameInUseError) as raised:
        await asyncio.wait_for(second.read(10), 5)
    text = str(raised.value)
    assert "consumer_name='pod-a'" in text
    assert "unique per process" in text
    error = raised.value
    assert str(type(error)(*error.args)) == text  # rebuilt by a result backend
    assert (
        await redis.get(lease_key("s", GROUP, "pod-a")) == first.holding.token.encode()
    )
    await second.close()  # not its lease: left alone
    assert await redis.get(lease_key("s", GROUP, "pod-a")) is not None
    await first.close()
    assert await redis.get(lease_key("s", GROUP, "pod-a")) is None
    third = StreamTransport(
        stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    )
    await asyncio.wait_for(third.read(10), 1)  # free at once
    await third.close()
    await broker.shutdown()


async def test_a_dead_processs_consumer_name_is_taken_once_its_lease_expires(
    fake: dict[str, Any], redis: Any
) -> None:
    """A restart under the same name (a pod name) after a crash."""
    await redis.set(lease_key("s", GROUP, "pod-a"), "dead:1:x", px=300)
    broker = stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    await broker.startup()
    transport = StreamTransport(broker)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(transport.read(10), 5)
    assert 0.2 <= loop.time() - began < 2
    assert transport.holding.leased
    await transport.close()
    await broker.shutdown()


async def test_stopping_before_the_lease_never_reads_the_names_pending_entries(
    fake: dict[str, Any], redis: Any
) -> None:
    """A process waiting for a live sibling's name must not take its entries."""
    broker = stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    await broker.startup()
    first = StreamTransport(broker)
    await kick(broker, 3)
    held = await read(first, 3)
    second = StreamTransport(
        stream_broker(fake, idle_timeout=200, consumer_name="pod-a")
    )
    reading = asyncio.ensure_future(second.read(10))
    await asyncio.sleep(0.05)  # waiting for the lease
    assert await second.interrupt(reading) == []
    assert second.outstanding == 0
    await first.ack([d.handle for d in held])
    await second.close()
    await first.close()
    await broker.shutdown()


async def test_a_lease_that_cannot_be_taken_yet_is_retried_like_a_read(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away when the worker starts: retried in place, not a crash."""
    monkeypatch.setattr(redis_common, "RETRY_DELAY", 0.01)
    broker = stream_broker(fake, idle_timeout=60_000)
    await broker.startup()
    transport = StreamTransport(broker)
    failures = [RedisConnectionError("away")]
    take = transport.holding.redis.set

    async def set_once_away(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await take(*args, **kwargs)

    monkeypatch.setattr(transport.holding.redis, "set", set_once_away)
    await kick(broker, 1)
    assert len(await read(transport, 1)) == 1
    assert transport.holding.leased
    await transport.close()
    await broker.shutdown()
