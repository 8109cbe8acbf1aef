"""Where a lost consumer group is created again, and the fleet's mark.

On fakeredis; a real Redis restarted without persistence, and real
worker processes, are in
``tests/integration/faults/test_stream_group_loss.py``.
"""

from typing import Any

import pytest
from taskiq import BrokerMessage
from taskiq_redis import RedisStreamBroker

from taskiq_batching.transports.redis_groups import (
    entry_order,
    furthest,
    mark_of,
    restart_at,
)
from taskiq_batching.transports.redis_holding import mark_key
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.unit.transports.conftest import CommandLog

pytestmark = pytest.mark.timeout(30)

GROUP = "taskiq"
MARK = mark_key("s", GROUP)


def stream_broker(fake: dict[str, Any]) -> RedisStreamBroker:
    return RedisStreamBroker(
        "redis://fake:6379/0", queue_name="s", xread_block=10, **fake
    )


async def kick(broker: RedisStreamBroker, prefix: str, count: int) -> None:
    for index in range(count):
        message = f"{prefix}{index}".encode()
        await broker.kick(
            BrokerMessage(task_id=str(index), task_name="t", message=message, labels={})
        )


async def read(transport: StreamTransport, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        chunk = await transport.read(100)
        assert chunk, f"{len(got)} of {count} entries came"
        got.extend(d.data for d in chunk)
        await transport.ack([d.handle for d in chunk])
    return got


def test_entry_ids_compare_as_numbers() -> None:
    assert entry_order(b"10-0") > entry_order("9-5")
    assert entry_order("5-10") > entry_order(b"5-9")
    assert entry_order("7") == (7, 0)


def test_the_furthest_entry_read_never_goes_back() -> None:
    newer, older = (b"10-0", b"new"), (b"9-5", b"old")
    assert furthest(None, older) == older
    assert furthest(older, newer) == newer
    # Pending entries read back at a stop are older: they never move it back.
    assert furthest(newer, older) == newer


async def test_a_tick_publishes_how_far_the_worker_read_only_when_it_moved(
    fake: dict[str, Any], redis: Any, commands: CommandLog
) -> None:
    broker = stream_broker(fake)
    await broker.startup()
    transport = StreamTransport(broker)
    await kick(broker, "m", 3)
    await read(transport, 3)
    (newest, _), *_ = await redis.xrevrange("s", count=1)
    commands.clear()
    assert await transport.holding.tick() == 2  # the lease, the mark
    assert await redis.get(MARK) == mark_of(newest, b"m2")
    commands.clear()
    assert await transport.holding.tick() == 1  # at rest: the lease only
    assert [args[0] for args in commands.named("SET")] == [transport.holding.key]
    await transport.close()
    await broker.shutdown()


async def test_a_worker_that_read_nothing_restarts_a_deleted_group_at_the_mark(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake)
    await broker.startup()
    reader = StreamTransport(broker)
    await kick(broker, "old", 3)
    assert await read(reader, 3) == [b"old0", b"old1", b"old2"]
    await reader.close()  # leaving, it publishes its mark
    newcomer = StreamTransport(stream_broker(fake))
    await redis.xgroup_destroy("s", GROUP)
    await kick(broker, "new", 2)
    assert await read(newcomer, 2) == [b"new0", b"new1"]  # old ones not again
    await newcomer.close()
    await broker.shutdown()


async def test_a_stream_made_again_is_read_from_its_start_despite_a_stale_mark(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake)
    await broker.startup()
    await kick(broker, "old", 2)
    (newest, _), *_ = await redis.xrevrange("s", count=1)
    await redis.delete("s")
    # Published late by a worker of before. The new entries may get the old
    # ids (made again within one millisecond): the mark's digest tells.
    await redis.set(MARK, mark_of(newest, b"old1"))
    await kick(broker, "new", 2)
    (again, _), *_ = await redis.xrevrange("s", count=1)
    await redis.set(MARK, mark_of(again, b"old1"))  # the same id, surely
    assert await restart_at(redis, "s", GROUP, None) == "0"
    transport = StreamTransport(stream_broker(fake))
    assert await read(transport, 2) == [b"new0", b"new1"]
    await transport.close()
    await broker.shutdown()


async def test_the_furthest_entry_known_is_where_the_group_restarts(
    fake: dict[str, Any], redis: Any
) -> None:
    broker = stream_broker(fake)
    await broker.startup()
    await kick(broker, "m", 3)
    ids = [entry_id for entry_id, _ in await redis.xrange("s")]
    assert await restart_at(redis, "s", GROUP, None) == "0"
    await redis.set(MARK, mark_of(ids[1], b"m1"))
    assert await restart_at(redis, "s", GROUP, (ids[0], b"m0")) == ids[1]
    assert await restart_at(redis, "s", GROUP, (ids[2], b"m2")) == ids[2]
    # This worker's entry made again with other data: only the mark counts.
    assert await restart_at(redis, "s", GROUP, (ids[2], b"other")) == ids[1]
    # A mark whose entry holds other data now: not counted.
    await redis.set(MARK, mark_of(ids[2], b"other"))
    assert await restart_at(redis, "s", GROUP, (ids[0], b"m0")) == ids[0]
    await broker.shutdown()
