"""Commands packed by hand, sent in one round trip, their replies read in order."""

import asyncio
import sys
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_batching._compat.redis_py import (
    give_back,
    read_reply,
    send_packed,
    take_connection,
)
from taskiq_batching.transports.redis_wire import bulk, command, round_trip
from tests.unit.transports.fake_redis import fake_redis

pytestmark = pytest.mark.timeout(30)


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert bulk(b"") == b"$0\r\n\r\n"
    assert bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert command([b"SET", b"k", b"v"]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"


async def test_every_reply_comes_in_order_a_failed_command_in_its_place(
    redis: Any,
) -> None:
    await redis.set("text", "not a number")
    replies = await round_trip(
        redis,
        [
            command([b"SET", b"a", b"1"]),
            command([b"INCR", b"text"]),
            command([b"INCR", b"a"]),
            command([b"GET", b"a"]),
        ],
        4,
    )
    assert replies[0] in (True, b"OK")
    assert isinstance(replies[1], ResponseError)
    assert replies[2:] == [2, b"2"]
    # The connection went back to the pool with nothing left to read.
    assert await redis.get("a") == b"2"


@pytest.mark.parametrize("protocol", [None, 2, 3], ids=["default", "resp2", "resp3"])
async def test_replies_that_do_not_come_in_time_close_the_connection(
    protocol: int | None,
) -> None:
    async with fake_redis() as (server, port):
        client = Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=0.3,
            retry=Retry(NoBackoff(), 0),
            protocol=protocol,
        )
        assert await round_trip(client, [command([b"SET", b"k", b"v"])], 1) == [b"OK"]
        if protocol == 3:  # the handshake was RESP3's
            assert server.heard(b"HELLO") == [[b"HELLO", b"3"]]
        server.silent = True
        with pytest.raises(RedisTimeoutError, match="2 of 2 replies not read"):
            await round_trip(client, [command([b"SET", b"k", b"v"])] * 2, 2)
        assert server.heard_while_silent.is_set()
        # Had the connection gone back to the pool open, its next user would
        # read the late replies of these commands as the replies of its own.
        server.silent = False
        replies = await round_trip(client, [command([b"SET", b"k", b"v"])] * 3, 3)
        assert replies == [b"OK"] * 3
        await client.aclose()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout from 3.11")
async def test_a_round_trip_runs_under_one_timer_and_no_task_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fake_redis() as (server, port):
        client = Redis(host="127.0.0.1", port=port, socket_timeout=5)
        assert await round_trip(client, [command([b"SET", b"k", b"v"])], 1) == [b"OK"]

        def no_wait_for(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a write bounded by a task of its own")

        # redis-py's send_packed_command bounds its write with wait_for.
        monkeypatch.setattr(asyncio, "wait_for", no_wait_for)
        replies = await round_trip(client, [command([b"SET", b"k", b"w"])], 1)
        monkeypatch.undo()
        assert replies == [b"OK"]
        assert server.heard(b"SET")[-1] == [b"SET", b"k", b"w"]
        await client.aclose()


async def test_a_write_on_a_closed_connection_fails_and_closes_it() -> None:
    async with fake_redis() as (_, port):
        client = Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
        connection = await take_connection(client)
        try:
            connection._writer.transport.close()
            with pytest.raises(RedisConnectionError):
                await send_packed(connection, command([b"PING"]))
            assert not connection.is_connected
            # Its next use connects again.
            await send_packed(connection, command([b"PING"]))
            assert await read_reply(connection) is not None
        finally:
            await give_back(client, connection)
            await client.aclose()
