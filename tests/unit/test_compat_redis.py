"""Each piece of redis-py ``_compat_redis`` relies on, checked against the installed
redis-py, on RESP2 and RESP3 connections to the real Redis.
"""

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskiq_batching._compat import redis_py as _compat_redis
from taskiq_batching.transports.redis_wire import command
from tests.unit.transports.fake_redis import fake_redis

pytestmark = pytest.mark.timeout(30)

#: On RESP2 and RESP3 connections (with ``integration``: to the real Redis).
on_both_protocols = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


@pytest.fixture
async def client(redis_url: str, protocol: int) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, protocol=protocol, socket_timeout=5)
    yield redis
    await redis.aclose()


def test_hiredis_available_says_whether_new_connections_parse_in_c() -> None:
    available = _compat_redis.hiredis_available()
    if importlib.util.find_spec("hiredis") is None:
        assert not available
    pool: Any = Redis().connection_pool
    parser = type(pool.make_connection()._parser).__name__
    assert ("Hiredis" in parser) == available


@pytest.mark.parametrize("protocol", [None, 2, 3], ids=["default", "resp2", "resp3"])
async def test_a_taken_connection_is_connected_and_given_back_for_reuse(
    protocol: int | None,
) -> None:
    async with fake_redis() as (server, port):
        redis = Redis(host="127.0.0.1", port=port, protocol=protocol)
        connection = await _compat_redis.take_connection(redis)
        assert connection.is_connected
        if protocol == 3:
            assert server.heard(b"HELLO") == [[b"HELLO", b"3"]]
        await _compat_redis.give_back(redis, connection)
        again = await _compat_redis.take_connection(redis)
        assert again is connection
        await _compat_redis.give_back(redis, again)
        await redis.aclose()


@pytest.mark.integration
@on_both_protocols
async def test_packed_commands_are_sent_and_their_replies_read_in_order(
    client: Redis, protocol: int
) -> None:
    connection = await _compat_redis.take_connection(client)
    try:
        await _compat_redis.send_packed(
            connection,
            command([b"ECHO", b"one"])
            + command([b"NO-SUCH-COMMAND"])
            + command([b"ECHO", b"two"]),
        )
        assert await _compat_redis.read_reply(connection) == b"one"
        with pytest.raises(ResponseError):
            await _compat_redis.read_reply(connection)
        # An error reply leaves the connection as it was: the next reply follows.
        assert connection.is_connected
        assert await _compat_redis.read_reply(connection) == b"two"
    finally:
        await _compat_redis.give_back(client, connection)


@pytest.mark.integration
@on_both_protocols
async def test_a_reply_is_read_with_no_timeout_of_its_own(client: Redis) -> None:
    connection = await _compat_redis.take_connection(client)
    # Once connected (its handshake read under a timeout a loaded machine
    # cannot miss), a socket timeout far shorter than the server's wait:
    # read_response's default timeout would give up; the caller's own
    # bounds the read instead.
    connection.socket_timeout = 0.05
    try:
        await _compat_redis.send_packed(
            connection, command([b"BLPOP", b"tb-compat-empty-list", b"0.3"])
        )
        assert await _compat_redis.read_reply(connection) is None
    finally:
        await _compat_redis.disconnect(connection)
        await _compat_redis.give_back(client, connection)


@pytest.mark.integration
@on_both_protocols
async def test_a_cancelled_read_closes_the_connection(client: Redis) -> None:
    connection = await _compat_redis.take_connection(client)
    try:
        await _compat_redis.send_packed(
            connection, command([b"BLPOP", b"tb-compat-empty-list", b"5"])
        )
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_compat_redis.read_reply(connection), 0.1)
        # Its late reply must not reach the connection's next user.
        assert not connection.is_connected
    finally:
        await _compat_redis.give_back(client, connection)
    assert await client.ping()


@pytest.mark.integration
@on_both_protocols
async def test_a_disconnected_connection_connects_again_when_used(
    client: Redis,
) -> None:
    connection = await _compat_redis.take_connection(client)
    try:
        await _compat_redis.disconnect(connection)
        assert not connection.is_connected
        await _compat_redis.send_packed(connection, command([b"ECHO", b"back"]))
        assert await _compat_redis.read_reply(connection) == b"back"
    finally:
        await _compat_redis.give_back(client, connection)


class FailingOnce:
    """An attempt that fails the first time only; and the failures reported."""

    def __init__(self) -> None:
        self.attempts = 0
        self.failures: list[Exception] = []

    async def attempt(self) -> str:
        self.attempts += 1
        if self.attempts == 1:
            raise RedisConnectionError("lost")
        return "done"

    async def failed(self, error: Exception) -> None:
        self.failures.append(error)


@pytest.mark.parametrize("retries", [1, 0])
async def test_retries_follow_the_clients_policy(retries: int) -> None:
    once = FailingOnce()
    async with fake_redis() as (_, port):
        redis = Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), retries))
        connection = await _compat_redis.take_connection(redis)
        try:
            if retries:
                done = await _compat_redis.with_retries(
                    connection, once.attempt, once.failed
                )
                assert done == "done"
            else:
                with pytest.raises(RedisConnectionError, match="lost"):
                    await _compat_redis.with_retries(
                        connection, once.attempt, once.failed
                    )
        finally:
            await _compat_redis.give_back(redis, connection)
            await redis.aclose()
    assert once.attempts == retries + 1
    assert [str(error) for error in once.failures] == ["lost"]


def test_string_encoding_is_the_clients() -> None:
    assert _compat_redis.string_encoding(Redis()) == ("utf-8", "strict")
    latin = Redis(encoding="latin-1", encoding_errors="replace")
    assert _compat_redis.string_encoding(latin) == ("latin-1", "replace")


def test_reply_timeout_is_the_clients_socket_timeout() -> None:
    pool: Any = Redis(socket_timeout=0.7).connection_pool
    assert _compat_redis.reply_timeout(pool.make_connection()) == 0.7


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_buffered_replies_are_taken_as_read_response_gives_them(
    protocol: int,
) -> None:
    if not _compat_redis.hiredis_available():
        pytest.skip("replies are taken from hiredis's buffer only")
    async with fake_redis() as (_, port):
        redis = Redis(host="127.0.0.1", port=port, protocol=protocol)
        connection = await _compat_redis.take_connection(redis)
        try:
            # What the server sent, as if in one socket read: three whole
            # replies, then part of a fourth (left for ``read_reply``).
            connection._parser._reader.feed(b"+OK\r\n-ERR no\r\n:2\r\n$3\r\nab")
            found: list[Any] = [b"first"]
            await _compat_redis.read_buffered(connection, 10, found)
            assert found[:2] == [b"first", b"OK"]
            assert isinstance(found[2], ResponseError)
            assert found[3:] == [2]
            # No more than the caller reads.
            connection._parser._reader.feed(b"c\r\n:3\r\n")
            await _compat_redis.read_buffered(connection, 5, found)
            assert found[4:] == [b"abc"]
            assert connection.is_connected
        finally:
            await _compat_redis.disconnect(connection)
            await _compat_redis.give_back(redis, connection)
            await redis.aclose()


async def test_a_buffered_connection_error_is_raised_and_closes_the_connection() -> (
    None
):
    if not _compat_redis.hiredis_available():
        pytest.skip("replies are taken from hiredis's buffer only")
    async with fake_redis() as (_, port):
        redis = Redis(host="127.0.0.1", port=port, protocol=2)
        connection = await _compat_redis.take_connection(redis)
        try:
            connection._parser._reader.feed(b"+OK\r\n-LOADING not yet\r\n")
            found: list[Any] = []
            with pytest.raises(RedisConnectionError):
                await _compat_redis.read_buffered(connection, 3, found)
            assert found == [b"OK"]
            assert not connection.is_connected
        finally:
            await _compat_redis.give_back(redis, connection)
            await redis.aclose()


async def test_a_buffered_push_message_is_handed_on_and_not_counted() -> None:
    if not _compat_redis.hiredis_available():
        pytest.skip("replies are taken from hiredis's buffer only")
    async with fake_redis() as (_, port):
        redis = Redis(host="127.0.0.1", port=port, protocol=3)
        connection = await _compat_redis.take_connection(redis)
        parser: Any = connection._parser
        pushed: list[Any] = []

        async def handle_push_response(response: Any, **kwargs: Any) -> None:
            pushed.append(response)

        parser.handle_push_response = handle_push_response
        try:
            # A reply, a push message (RESP3), then two more replies.
            parser._reader.feed(
                b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:2\r\n:3\r\n"
            )
            found: list[Any] = []
            await _compat_redis.read_buffered(connection, 2, found)
            assert found == [b"OK", 2]
            assert [list(push) for push in pushed] == [[b"invalidate", [b"k"]]]
            # The reply past the count is left for the next read.
            await _compat_redis.read_buffered(connection, 3, found)
            assert found == [b"OK", 2, 3]
            assert connection.is_connected
        finally:
            await _compat_redis.disconnect(connection)
            await _compat_redis.give_back(redis, connection)
            await redis.aclose()
