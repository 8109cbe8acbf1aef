"""Reading many messages per round trip from taskiq-redis's brokers.

A worker with ``BatchingMiddleware`` reads its broker in *chunks*: lists
of deliveries that arrived together, so that the worker pays its
per-read costs (a future, a wake-up, a round trip) once per chunk rather
than once per message.

* ``ListQueueBroker``: taskiq-redis does one ``BRPOP`` (and builds one
  client) per message. We read the same list the same way round (oldest
  first), up to ``LIST_FETCH_COUNT`` messages per ``RPOP``, and block in
  ``BRPOP`` only when it is empty. Messages are removed when read, as
  before (the list broker has no acks).
* ``RedisStreamBroker``: the same ``XREADGROUP`` of the same streams,
  group, consumer and count as taskiq-redis's listener. While entries are
  waiting it is sent from a server-side script that returns the whole
  reply as one MessagePack string: redis-py's pure-Python reply parser
  then has one value to read instead of five per entry, which was the
  largest cost of a busy worker. When nothing is waiting, an ordinary
  blocking ``XREADGROUP`` waits for the next entries. A server that cannot
  run the script (no scripting, no ``cmsgpack``) is read the ordinary way
  only. Each entry's ack is a ``StreamAck`` (one ``XACK``), which
  ``bulk.ack_many`` sends in one command per batch. taskiq-redis's
  listener also claims idle entries of dead consumers after every read;
  here ``reclaim.py`` does it on a timer instead.
* Any other broker: its own listener, one delivery per chunk.
"""

import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import AckableMessage, AsyncBroker
from taskiq_redis import ListQueueBroker, RedisStreamBroker

logger = logging.getLogger("taskiq_batching")

#: Messages taken per round trip from a non-empty list.
LIST_FETCH_COUNT = 100
#: Entries read at once from a stream whose broker sets no ``xread_count``.
STREAM_FETCH_COUNT = 100

#: XREADGROUP of KEYS (streams) from ARGV[4..] (one id each) for group
#: ARGV[1], consumer ARGV[2], COUNT ARGV[3]; the reply packed with
#: MessagePack, or false when nothing is waiting. Never blocks. A server
#: without ``cmsgpack`` gets an error before anything is read: a script's
#: writes are not undone when it fails, and entries read by a failed script
#: would stay pending, delivered to nobody.
_READ_PACKED = """
local found, pack = pcall(function() return cmsgpack.pack end)
if not found or type(pack) ~= 'function' then
  return redis.error_reply('NOPACK cmsgpack is not available')
end
local command = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS'}
for i = 1, #KEYS do command[#command + 1] = KEYS[i] end
for i = 4, #ARGV do command[#command + 1] = ARGV[i] end
local reply = redis.call(unpack(command))
if not reply then return false end
return pack(reply)
"""


class StreamAck:
    """The ack of one stream entry: ``XACK`` of its id in the broker's group.

    ``stream_entry`` lets ``bulk.ack_many`` ack many entries in one command.

    :param broker: the stream broker.
    :param stream: the entry's stream.
    :param entry_id: the entry's id.
    """

    __slots__ = ("broker", "stream_entry")

    def __init__(
        self, broker: RedisStreamBroker, stream: str, entry_id: bytes | str
    ) -> None:
        self.broker = broker
        self.stream_entry = (stream, entry_id)

    async def __call__(self) -> None:
        """Acknowledge the entry."""
        stream, entry_id = self.stream_entry
        async with Redis(connection_pool=self.broker.connection_pool) as redis:
            await redis.xack(stream, self.broker.consumer_group_name, entry_id)


@dataclass(slots=True)
class Fetched:
    """A message read by one of our readers.

    Lighter than taskiq's ``AckableMessage`` (a pydantic model), which is
    built only for messages handed to taskiq's Receiver (``delivered``).

    :param data: the message as the broker holds it.
    :param ack: acknowledges it.
    """

    data: bytes
    ack: StreamAck

    def delivered(self) -> AckableMessage:
        """The message as taskiq-redis's own listener would deliver it.

        :return: an ``AckableMessage``.
        """
        return AckableMessage(data=self.data, ack=self.ack)


Delivery = bytes | AckableMessage | Fetched
Chunks = Callable[[], AsyncGenerator[list[Delivery], None]]


def listener_for(
    broker: AsyncBroker,
    default: Callable[[], AsyncGenerator[bytes | AckableMessage, None]],
) -> Chunks:
    """How the worker should read a broker: a maker of chunk generators.

    :param broker: the worker's broker.
    :param default: the broker's own ``listen``.
    :return: a bulk reader for ``ListQueueBroker`` and ``RedisStreamBroker``
        (exactly those classes: a subclass may listen differently), else
        ``default`` one delivery per chunk.
    """
    if type(broker) is ListQueueBroker:
        return lambda: _list_chunks(broker)
    if type(broker) is RedisStreamBroker:
        return lambda: _stream_chunks(broker)
    return lambda: _one_by_one(default())


async def _one_by_one(
    listener: AsyncGenerator[bytes | AckableMessage, None],
) -> AsyncGenerator[list[Delivery], None]:
    try:
        async for delivery in listener:
            yield [delivery]
    finally:
        await listener.aclose()


async def _list_chunks(broker: ListQueueBroker) -> AsyncGenerator[list[Delivery], None]:
    async with Redis(connection_pool=broker.connection_pool) as redis:
        while True:
            # redis-py types these replies loosely: bytes, as the pool decodes none.
            popped: list[Delivery] | None = await redis.rpop(  # type: ignore[assignment]
                broker.queue_name,
                LIST_FETCH_COUNT,
            )
            if popped:
                yield popped
                continue
            blocked: list[bytes] | None = await redis.brpop(  # type: ignore[assignment]
                [broker.queue_name],
            )
            if blocked:
                yield [blocked[1]]


async def _stream_chunks(
    broker: RedisStreamBroker,
) -> AsyncGenerator[list[Delivery], None]:
    ids: dict[Any, Any] = {broker.queue_name: ">", **broker.additional_streams}
    count = broker.count or STREAM_FETCH_COUNT
    group, consumer = broker.consumer_group_name, broker.consumer_name
    async with Redis(connection_pool=broker.connection_pool) as redis:
        read_packed: Any = redis.register_script(_READ_PACKED)
        packed = True
        while True:
            reply: Any = None
            failure: ResponseError | None = None
            if packed:
                try:
                    blob = await read_packed(
                        keys=list(ids), args=[group, consumer, count, *ids.values()]
                    )
                except ResponseError as exc:
                    failure = exc
                else:
                    reply = msgpack.unpackb(blob, raw=True) if blob else None
            if not reply:
                # Nothing waiting: block until something arrives.
                reply = await redis.xreadgroup(
                    group, consumer, ids, count=count, block=broker.block
                )
                if failure is not None:
                    # The server reads streams but cannot run the script.
                    packed = False
                    logger.warning(
                        "taskiq_batching: reading %s without the packed-read "
                        "script (%s); each entry is parsed by redis-py",
                        broker.queue_name,
                        failure,
                    )
            if reply:
                yield _deliveries(broker, reply)


def _deliveries(broker: RedisStreamBroker, reply: Any) -> list[Delivery]:
    """Turn an XREADGROUP reply into deliveries, in stream order.

    The reply is the packed one (``[[stream, [[id, [field, value, ...]]]]]``)
    or redis-py's, whose shape depends on its protocol and version: a list
    of ``[stream, entries]`` or a dict of ``stream: entries``, the entries
    possibly wrapped in one more list, each ``(id, {field: value})``.
    """
    streams = reply.items() if isinstance(reply, dict) else reply
    chunk: list[Delivery] = []
    for raw_stream, raw_entries in streams:
        stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
        entries = raw_entries
        if len(entries) == 1 and _is_entries(entries[0]):
            entries = entries[0]
        for entry_id, fields in entries:
            if entry_id is not None:
                data = _field(fields, b"data")
                chunk.append(Fetched(data, StreamAck(broker, stream, entry_id)))
    return chunk


def _is_entries(value: Any) -> bool:
    """Whether ``value`` is a list of entries rather than one entry."""
    return isinstance(value, list) and (
        not value or isinstance(value[0], (list, tuple))
    )


def _field(fields: Any, name: bytes) -> bytes:
    """A field's value: fields as a dict (redis-py) or a flat list (packed).

    An entry without it (written by someone else) gets empty data, which
    the worker reports and acks as an undecodable message.
    """
    value = None
    if isinstance(fields, dict):
        value = fields.get(name)
    elif isinstance(fields, list):
        if len(fields) == 2 and fields[0] == name:  # what taskiq-redis writes
            value = fields[1]
        else:
            value = dict(zip(fields[::2], fields[1::2], strict=False)).get(name)
    return value if isinstance(value, bytes) else b""
