"""Every place the Redis transports rely on redis-py below its command API.

The transports send most commands through redis-py's documented client
methods. A batch of results and a stream's XACK are the exceptions
(``redis_wire``): their commands are packed by hand, written on a
connection taken from the client's pool, and their replies read one by
one. That takes redis-py's connection-level API, which it does not
document as stable; it lives here (ruff's ``SLF`` rule is off in
``_compat/`` only), each function saying what it relies on.
``tests/unit/test_compat_redis.py`` checks each against the installed
redis-py, on RESP2 and RESP3 connections, and ``pyproject.toml`` bounds
the versions.

Tested with redis-py 8.1.0 (RESP2 unless told ``protocol=3``) and 8.2.0
(RESP3 by default, ``HELLO 3``).
"""

import math
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, TypeVar

from redis.exceptions import ConnectionError
from redis.utils import HIREDIS_AVAILABLE

T = TypeVar("T")


try:  # what the hiredis parser's reader gives when no whole reply is buffered
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - another redis-py: replies read one by one
    _NOT_ENOUGH_DATA = None

#: Whether redis-py found hiredis (>= 3.2), its C reply parser. Without
#: it the Redis brokers use the generic transport (``transports``).
HIREDIS = bool(HIREDIS_AVAILABLE)


def hiredis_available() -> bool:
    """Whether redis-py reads replies with hiredis, its C parser, by default.

    Relies on: ``redis.utils.HIREDIS_AVAILABLE``, True when hiredis (>= 3.2
    for redis-py 8) is importable, which makes ``_HiredisParser`` the
    default ``parser_class`` of new connections (redis-py 8.1, 8.2).

    :return: True when hiredis is installed and usable (``HIREDIS``).
    """
    return HIREDIS


async def take_connection(redis: Any) -> Any:
    """A connected connection from the client's pool, for this caller alone.

    Relies on: ``ConnectionPool.get_connection()`` (no arguments since
    redis-py 5.3; a ``BlockingConnectionPool`` waits for a free one),
    which connects it (handshake included: ``HELLO 3`` on RESP3), redis-py
    8.1, 8.2.

    :param redis: a ``redis.asyncio.Redis`` client (not a cluster).
    :return: the connection; give it back with ``give_back``.
    """
    return await redis.connection_pool.get_connection()


async def give_back(redis: Any, connection: Any) -> None:
    """Return a connection taken with ``take_connection`` to its pool.

    Relies on: ``ConnectionPool.release(connection)``, which keeps a closed
    connection too (it reconnects on its next use), redis-py 8.1, 8.2.

    :param redis: the client it was taken from.
    :param connection: the connection.
    """
    await redis.connection_pool.release(connection)


async def with_retries(
    connection: Any,
    attempt: Callable[[], Awaitable[T]],
    failed: Callable[[Exception], Awaitable[Any]],
) -> T:
    """Run ``attempt`` under the connection's retry policy.

    Relies on: ``Connection.retry`` (a ``redis.asyncio.retry.Retry``, the
    client's ``retry=``) and its ``call_with_retry(do, fail)``, which
    retries on the policy's errors, calling ``fail(error)`` after each
    failure, and raises the last one, redis-py 8.1, 8.2.

    :param connection: a connection from ``take_connection``.
    :param attempt: the exchange to run (again).
    :param failed: called with each failure before the next attempt.
    :return: what ``attempt`` returned.
    """
    result: T = await connection.retry.call_with_retry(attempt, failed)
    return result


async def disconnect(connection: Any) -> None:
    """Close a connection; its next use connects again.

    Relies on: ``Connection.disconnect()``, redis-py 8.1, 8.2.

    :param connection: the connection.
    """
    await connection.disconnect()


async def send_packed(connection: Any, data: bytes) -> None:
    """Write bytes already in RESP, as they are, in one write.

    The caller bounds the write and the reading of its replies with one
    timeout (``redis_wire``): redis-py's ``send_packed_command`` bounds
    the write with ``asyncio.wait_for``, a task of its own per write on
    Python 3.11.

    Relies on: ``Connection.is_connected``, ``connect()`` (as the pool's
    ``ensure_connection`` calls it) and ``check_health()``, as
    ``send_packed_command`` calls them; ``Connection._writer``, the
    ``asyncio.StreamWriter`` it writes with; a failed or cancelled write
    closing the connection (``disconnect(nowait=True)``) and an ``OSError``
    raised as ``ConnectionError``, as ``send_packed_command`` does,
    redis-py 8.1, 8.2.

    :param connection: the connection.
    :param data: one or more commands, packed.
    :raises redis.exceptions.ConnectionError: the write failed (the
        connection is closed).
    """
    if not connection.is_connected:
        await connection.connect()
    await connection.check_health()
    writer = connection._writer
    if writer is None or writer.transport.is_closing():
        await connection.disconnect(nowait=True)
        raise ConnectionError("Connection closed by the server before write")
    try:
        writer.writelines((data,))  # as redis-py writes (fakeredis has no write)
        await writer.drain()
    except OSError as exc:
        await connection.disconnect(nowait=True)
        raise ConnectionError(f"Error while writing to socket: {exc}") from exc
    except BaseException:
        # Part of the data may have been written: the connection is unusable.
        await connection.disconnect(nowait=True)
        raise


async def read_reply(connection: Any) -> Any:
    """Read the next reply, with no timeout of its own.

    The caller bounds a batch of reads with one timeout: redis-py's own
    (the socket timeout) would cost a timer per reply.

    Relies on: ``Connection.read_response(timeout=math.inf)`` ("block
    indefinitely", redis-py 8.1, 8.2); an error reply raised as
    ``ResponseError`` (the connection stays usable); the connection closed
    on any other failure, a cancellation included (its default
    ``disconnect_on_error=True``), so no reply is left for its next user.
    RESP3 push messages are handled inside, never returned.

    :param connection: the connection.
    :raises redis.exceptions.ResponseError: the server answered an error.
    :return: the reply as the connection's parser gives it.
    """
    return await connection.read_response(timeout=math.inf)


async def read_buffered(connection: Any, replies: int, found: list[Any]) -> None:
    """Take replies already received, without a coroutine per reply.

    After a reply read with ``read_reply``, the replies of a batch that
    came in the same socket reads wait parsed-to-be in the parser's
    buffer: each is taken straight from it, as the parser would return it
    (an error reply as its ``ResponseError``, appended, not raised), until
    the buffer holds no whole reply or ``replies`` are in ``found``.

    Relies on: the hiredis parser's ``_reader`` (a ``hiredis.Reader``,
    None once disconnected) and ``_connected``; ``Reader.gets()`` giving
    ``redis._parsers.hiredis.NOT_ENOUGH_DATA`` (its ``notEnoughData``)
    when no whole reply is buffered, an error reply as the
    exception made by the parser's ``replyError`` (``ResponseError``, or a
    ``ConnectionError`` subclass such as ``BusyLoadingError``, which
    ``read_response`` raises, closing the connection); on RESP3, a push
    message as an instance of the parser's
    ``_hiredis_PushNotificationType``, handed to its
    ``handle_push_response`` as ``read_response`` does, never returned
    (redis-py 8.1, 8.2). Another parser (pure Python) takes nothing here.

    :param connection: the connection.
    :param replies: how many replies the caller reads in all.
    :param found: the replies read so far; taken ones are appended.
    :raises redis.exceptions.ConnectionError: a reply was one (the
        connection is closed, as ``read_reply`` closes it).
    """
    parser: Any = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is None or _NOT_ENOUGH_DATA is None:
        return
    if not getattr(parser, "_connected", False):
        return
    # Every whole reply buffered, up to the count, taken by ``gets`` in one
    # C loop (``iter`` stops at NOT_ENOUGH_DATA): a batch has a reply per
    # message. Only replies of other types than plain values are looked at.
    gets = iter(reader.gets, _NOT_ENOUGH_DATA)
    taken = list(islice(gets, max(replies - len(found), 0)))
    while taken:
        if _PLAIN.issuperset(map(type, taken)):
            found += taken
        else:
            await _sort_replies(connection, parser, taken, found)
        if len(found) >= replies:
            return
        # Push messages are not replies: the batch may have more to take.
        taken = list(islice(gets, replies - len(found)))


#: Types of replies taken as they are (no error, push message or list).
_PLAIN = frozenset((bytes, int, str, float, type(None)))


async def _sort_replies(
    connection: Any, parser: Any, taken: list[Any], found: list[Any]
) -> None:
    """Hand push messages on, raise a connection error, keep the replies."""
    push = getattr(parser, "_hiredis_PushNotificationType", None)
    for reply in taken:
        if push is not None and isinstance(reply, push):
            await parser.handle_push_response(reply)
            continue
        failed = reply[0] if type(reply) is list and reply else reply
        if isinstance(failed, ConnectionError):  # what read_response raises
            await connection.disconnect(nowait=True)
            raise failed
        found.append(reply)


def reply_timeout(connection: Any) -> float | None:
    """The seconds a connection allows for a reply: the client's ``socket_timeout``.

    Relies on: ``Connection.socket_timeout`` (None: no timeout), redis-py
    8.1, 8.2.

    :param connection: the connection.
    :return: the timeout, or None.
    """
    timeout: float | None = connection.socket_timeout
    return timeout


def string_encoding(redis: Any) -> tuple[str, str]:
    """How a client encodes ``str`` arguments: its charset and error handler.

    Relies on: ``Redis.get_encoder()``, whose ``encoding`` and
    ``encoding_errors`` are the client's (``utf-8``, ``strict`` by
    default), redis-py 8.1, 8.2.

    :param redis: a ``redis.asyncio.Redis`` client.
    :return: ``(encoding, errors)`` for ``str.encode``.
    """
    encoder = redis.get_encoder()
    return str(encoder.encoding), str(encoder.encoding_errors)
