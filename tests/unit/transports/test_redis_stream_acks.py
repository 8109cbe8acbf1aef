"""A stream's XACK, packed by hand off a cluster: the same command redis-py sends."""

from typing import Any

import hiredis
import pytest
from redis.exceptions import ResponseError

from taskiq_batching.transports.redis_batches_names import TaskEntry, TaskStreams
from taskiq_batching.transports.redis_pending import Pending
from taskiq_batching.transports.redis_xack import xack_command
from tests.unit.transports.conftest import CommandLog

pytestmark = pytest.mark.timeout(30)

GROUP = "g"


def test_an_xack_is_packed_as_redis_reads_it() -> None:
    packed = xack_command(b"s", b"g", [b"1-0", b"12-3"])
    assert packed is not None
    reader = hiredis.Reader()
    reader.feed(packed)
    assert reader.gets() == [b"XACK", b"s", b"g", b"1-0", b"12-3"]
    assert reader.gets() is False  # nothing more


def test_ids_of_several_lengths_are_packed_in_their_order() -> None:
    ids = [b"9-9", b"9-10", b"9-11", b"10-0", b"10-1", b"1-0", b"123456-7"]
    for delete in (False, True):
        packed = xack_command(b"s", b"g", ids, delete=delete)
        assert packed is not None
        reader = hiredis.Reader()
        reader.feed(packed)
        replies = []
        while (reply := reader.gets()) is not False:
            replies.append(reply)
        xack = [b"XACK", b"s", b"g", *ids]
        assert replies == (
            [[b"MULTI"], xack, [b"XDEL", b"s", *ids], [b"EXEC"]] if delete else [xack]
        )


def test_ids_read_as_str_are_left_to_redis_py() -> None:
    assert xack_command(b"s", b"g", [b"1-0", "2-0"]) is None  # type: ignore[list-item]


async def added(redis: Any, count: int) -> list[bytes]:
    """``count`` entries of stream ``s``, read (pending) by consumer ``c``."""
    await redis.xgroup_create("s", GROUP, id="0", mkstream=True)
    for i in range(count):
        await redis.xadd("s", {"data": b"%d" % i})
    reply = await redis.xreadgroup(GROUP, "c", {"s": ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def pending_for(redis: Any, in_use: set[Any], cluster: bool = False) -> Pending:
    return Pending(redis, GROUP, "c", ["s"], None, 10, in_use, cluster=cluster)


async def test_a_packed_xack_acks_and_frees_the_entries(
    redis: Any, commands: CommandLog
) -> None:
    ids = await added(redis, 3)
    in_use = {("s", entry_id) for entry_id in ids}
    await pending_for(redis, in_use).ack([("s", entry_id) for entry_id in ids[:2]])
    assert commands.named("XACK") == []  # not through redis-py
    assert (await redis.xpending("s", GROUP))["pending"] == 1
    assert in_use == {("s", ids[2])}


@pytest.mark.parametrize("cluster", [False, True], ids=["str-ids", "cluster"])
async def test_otherwise_redis_py_sends_it(
    redis: Any, commands: CommandLog, cluster: bool
) -> None:
    ids = await added(redis, 2)
    sent = ids if cluster else [entry_id.decode() for entry_id in ids]
    await pending_for(redis, set(), cluster).ack([("s", one) for one in sent])
    assert len(commands.named("XACK")) == 1
    assert (await redis.xpending("s", GROUP))["pending"] == 0


async def test_an_error_reply_raises_and_the_entries_are_freed(redis: Any) -> None:
    await redis.set("s", "not a stream")
    in_use = {("s", b"1-0")}
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pending_for(redis, in_use).ack([("s", b"1-0")])
    assert in_use == set()


def test_an_ack_delete_is_packed_as_redis_reads_it() -> None:
    packed = xack_command(b"s", b"g", [b"1-0", b"12-3"], delete=True)
    assert packed is not None
    reader = hiredis.Reader()
    reader.feed(packed)
    assert reader.gets() == [b"MULTI"]
    assert reader.gets() == [b"XACK", b"s", b"g", b"1-0", b"12-3"]
    assert reader.gets() == [b"XDEL", b"s", b"1-0", b"12-3"]
    assert reader.gets() == [b"EXEC"]
    assert reader.gets() is False


def taken(entry_ids: list[bytes]) -> list[TaskEntry]:
    """Handles of entries taken from stream ``s`` (a task's key stream)."""
    names = TaskStreams("q", "t")
    return [TaskEntry("s", entry_id, (names, "-")) for entry_id in entry_ids]


async def test_taken_entries_are_acked_and_deleted_in_one_packed_transaction(
    redis: Any, commands: CommandLog
) -> None:
    ids = await added(redis, 3)
    handles = taken(ids)
    in_use: set[Any] = set(handles)
    await pending_for(redis, in_use).ack(handles[:2])
    assert commands.named("EVAL") == []  # not the script: no ids through Lua
    assert (await redis.xpending("s", GROUP))["pending"] == 1
    assert [entry_id for entry_id, _ in await redis.xrange("s")] == [ids[2]]
    assert in_use == {handles[2]}


async def test_a_failed_ack_delete_in_its_transaction_raises(redis: Any) -> None:
    await redis.set("s", "not a stream")
    handles = taken([b"1-0"])
    in_use: set[Any] = set(handles)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pending_for(redis, in_use).ack(handles)
    assert in_use == set()


async def test_on_a_cluster_redis_py_sends_the_ack_delete(
    redis: Any, commands: CommandLog
) -> None:
    ids = await added(redis, 2)
    await pending_for(redis, set(), cluster=True).ack(taken(ids))
    assert len(commands.named("EVAL")) == 1
    assert await redis.xlen("s") == 0


async def test_entries_acked_out_of_order_are_removed_and_pending_ones_kept(
    redis: Any,
) -> None:
    """Acked entries go (a group made again at 0 runs none twice), pending
    ones stay, whatever the order of the acks."""
    ids = await added(redis, 5)
    handles = taken(ids)
    pending = pending_for(redis, set(handles))
    await pending.ack([handles[1], handles[3]])  # 0, 2 and 4 still run
    assert [entry_id for entry_id, _ in await redis.xrange("s")] == [
        ids[0],
        ids[2],
        ids[4],
    ]
    await pending.ack([handles[0]])  # the oldest pending is now 2
    assert [entry_id for entry_id, _ in await redis.xrange("s")] == [ids[2], ids[4]]
    await pending.ack([handles[2], handles[4]])  # none pending: all delivered done
    assert await redis.xlen("s") == 0
    assert (await redis.xpending("s", GROUP))["pending"] == 0
