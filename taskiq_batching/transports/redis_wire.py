"""Many commands in one round trip, at little more than their bytes' cost.

redis-py's pipeline spends, per command, more than the server does: it
builds and encodes each command's arguments, and reads each reply under
a timeout of its own (a timer scheduled and cancelled per reply). With
its C reply parser (hiredis) the reading itself is cheap, so for a batch
of simple commands this module packs the commands directly in Redis's
protocol (RESP), sends them with one write, and reads every reply under
one timeout (the connection's ``socket_timeout``) for the whole batch.

Everything goes through redis-py's connection API (reached through
``taskiq_batching._compat.redis_py``), so a pooled
connection is handled as redis-py handles it: taken from and given back
to the client's pool, closed when a reply cannot be read (the replies
left unread would otherwise be read by its next user), and the round
trip retried by the connection's retry policy. Only commands redis-py
retries the same way are sent like this: idempotent ones (``SET``,
``MSET``, a stream's ``XACK``), whose retry after a lost connection
writes the same values (acks the same entries) again, and a stream's
``XREADGROUP`` (``redis_replies``), which redis-py's own command API
retries under the same policy.
"""

import asyncio
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_batching._compat.redis_py import (
    disconnect,
    give_back,
    read_buffered,
    read_reply,
    reply_timeout,
    send_packed,
    take_connection,
    with_retries,
)


def command(args: Sequence[bytes]) -> bytes:
    """One command in RESP: an array of bulk strings.

    :param args: the command's name and arguments, already encoded.
    :return: the bytes to send.
    """
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg) for arg in args)


def bulk(value: bytes) -> bytes:
    """One bulk string in RESP.

    :param value: its bytes.
    :return: its length, CRLF, the bytes, CRLF.
    """
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def round_trip(redis: Any, packed: Iterable[bytes], replies: int) -> list[Any]:
    """Send packed commands with one write; read their replies.

    :param redis: a ``redis.asyncio.Redis`` client (its pool, encoder and
        retry policy are used).
    :param packed: the commands, each packed by ``command`` (or by hand).
    :param replies: how many replies they give (one per command).
    :raises redis.exceptions.ConnectionError: the server could not be
        reached (after the connection's retries).
    :raises redis.exceptions.TimeoutError: the replies did not come in time.
    :return: each command's reply, in order; a command that failed has its
        ``ResponseError`` in its place (nothing is raised for it).
    """
    data = b"".join(packed)
    connection = await take_connection(redis)
    try:

        async def exchange() -> list[Any]:
            return await _exchange(connection, data, replies)

        async def failed(error: Exception) -> None:
            await disconnect(connection)

        return await with_retries(connection, exchange, failed)
    finally:
        await give_back(redis, connection)


async def _exchange(connection: Any, data: bytes, replies: int) -> list[Any]:
    found: list[Any] = []
    timeout = reply_timeout(connection)
    try:
        # A write or read cut by this timeout closes the connection
        # (send_packed and read_reply do on any error), so no unread reply
        # is left for its next user.
        if sys.version_info >= (3, 11):  # a timer, not a task per round trip
            async with asyncio.timeout(timeout):
                await send_packed(connection, data)
                await _read(connection, replies, found)
        else:
            await asyncio.wait_for(
                _send_read(connection, data, replies, found), timeout
            )
    except asyncio.TimeoutError:
        raise RedisTimeoutError(
            f"{replies - len(found)} of {replies} replies not read within {timeout} s"
        ) from None
    return found


async def _send_read(
    connection: Any, data: bytes, replies: int, found: list[Any]
) -> None:
    await send_packed(connection, data)
    await _read(connection, replies, found)


async def _read(connection: Any, replies: int, found: list[Any]) -> None:
    while len(found) < replies:
        try:
            found.append(await read_reply(connection))
        except ResponseError as error:
            found.append(error)
        # The replies that came with it, without a coroutine each.
        await read_buffered(connection, replies, found)
