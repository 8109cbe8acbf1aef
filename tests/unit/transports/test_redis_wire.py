"""Commands packed by hand, sent in one round trip, their replies read in order."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_batching.transports.redis_wire import bulk, command, round_trip

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


class Answering:
    """A server that answers +OK to every command, until told to go silent."""

    def __init__(self) -> None:
        self.silent = False
        self.commands = 0
        self.heard_while_silent = asyncio.Event()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = b""
        unanswered = 0  # on this connection, answered late (as errors)
        try:
            while data := await reader.read(65536):
                buffer += data
                complete, buffer = _commands(buffer)
                self.commands += complete
                if self.silent:
                    unanswered += complete
                    self.heard_while_silent.set()
                elif complete:
                    late = b"-ERR late reply\r\n" * unanswered
                    writer.write(late + b"+OK\r\n" * complete)
                    unanswered = 0
                    await writer.drain()
        finally:
            writer.close()


def _commands(buffer: bytes) -> tuple[int, bytes]:
    """How many whole RESP commands the buffer starts with, and the rest."""
    count = 0
    while True:
        rest = buffer
        try:
            header, rest = rest.split(b"\r\n", 1)
            for _ in range(int(header[1:])):
                length, rest = rest.split(b"\r\n", 1)
                size = int(length[1:])
                if len(rest) < size + 2:
                    return count, buffer
                rest = rest[size + 2 :]
        except ValueError:
            return count, buffer
        count += 1
        buffer = rest


@pytest.fixture
async def answering() -> AsyncIterator[tuple[Answering, int]]:
    server = Answering()
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield server, port
    listening.close()
    await listening.wait_closed()


async def test_replies_that_do_not_come_in_time_close_the_connection(
    answering: tuple[Answering, int],
) -> None:
    server, port = answering
    client = Redis(
        host="127.0.0.1", port=port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    assert await round_trip(client, [command([b"SET", b"k", b"v"])], 1) == [b"OK"]
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
