"""Reading a stream: one XREADGROUP, sent the way the client reads cheapest.

With redis-py's C reply parser (hiredis), a plain ``XREADGROUP`` (with
``BLOCK``, which answers at once when entries wait) and its reply taken
as the parser gives it, without redis-py's per-entry conversion: the
cheapest for the server and cheap for the worker. With the pure-Python
parser, reading five values per entry through coroutines costs the
worker about ten times more (measured in docs/benchmarks.md), so while
entries wait the command is sent from a script that packs the reply with
Redis's ``cmsgpack`` into one string, which ``msgpack`` unpacks in C;
then a blocking ``XREADGROUP`` waits when nothing does. A server that
cannot run the script, a client without ``msgpack``, and a cluster read
the plain way.

Replies come packed (``[[stream, [[id, [field, value, ...]]]]]``), as
the parser gives them (the same lists, or a dict of ``stream: entries``
with RESP3) or converted by redis-py (a cluster), whose shape depends on
its protocol and version: a list of ``[stream, entries]`` or a dict of
``stream: entries``, the entries possibly wrapped in one more list, each
``(id, {field: value})``. ``entries`` reads them all.
"""

import importlib
import logging
from collections.abc import Iterator
from typing import Any

from redis.exceptions import ResponseError

from taskiq_batching.transports.redis_common import parses_in_c

logger = logging.getLogger("taskiq_batching")

#: XREADGROUP of KEYS (streams) from ARGV[4..] (one id each) for group
#: ARGV[1], consumer ARGV[2], COUNT ARGV[3]; the reply packed with
#: MessagePack, or false when nothing waits. Never blocks. A server
#: without ``cmsgpack`` gets an error before anything is read: a script's
#: writes are not undone when it fails, and entries read by a failed
#: script would stay pending, delivered to nobody.
READ_PACKED = """
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


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


#: Unpacks the packed read's reply; only needed without hiredis.
msgpack = _optional("msgpack")


def _as_parsed(response: Any, **options: Any) -> Any:
    """The reply as the parser gave it (redis-py's response callback)."""
    return response


class StreamReads:
    """XREADGROUP of a broker's streams, for one consumer of its group.

    :param redis: the client (``RedisClient.redis``).
    :param cluster: whether it is the broker's own cluster client, whose
        replies redis-py converts (it is not this reader's to change).
    :param group: the consumer group.
    :param consumer: this consumer.
    :param ids: each stream's id to read from (``>``: new entries).
    :param block: milliseconds a read waits when nothing waits.
    """

    def __init__(
        self,
        redis: Any,
        cluster: bool,
        group: str,
        consumer: str,
        ids: dict[str, Any],
        block: int,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.ids = ids
        self.block = block
        in_c = not cluster and parses_in_c(redis)
        #: Whether reads go through the packing script while entries wait.
        self.packed = not cluster and not in_c and msgpack is not None
        self._script: Any = None
        if not cluster:
            # Entries are read from the lists the parser gives; converting
            # each to a tuple and a dict first is work thrown away.
            redis.set_response_callback("XREADGROUP", _as_parsed)
        if not cluster and not in_c and not self.packed:
            logger.warning(
                "taskiq_batching: neither hiredis nor msgpack is installed: "
                "stream replies are parsed in Python, which is slow; "
                'pip install "taskiq-batching[redis]"'
            )

    async def read(self, count: int) -> Any:
        """The next entries, at most ``count`` of each stream.

        :param count: ``COUNT`` of the read.
        :raises ResponseError: what the server answered (``NOGROUP`` ...).
        :return: the reply, packed or not (``entries`` reads either).
        """
        if self.packed:
            reply = await self._read_packed(count)
            if reply is not None:
                return reply
        return await self.redis.xreadgroup(
            self.group, self.consumer, self.ids, count=count, block=self.block
        )

    async def _read_packed(self, count: int) -> Any:
        """The packed reply, or None when nothing waits or scripts are refused."""
        if self._script is None:
            self._script = self.redis.register_script(READ_PACKED)
        try:
            blob = await self._script(
                keys=list(self.ids),
                args=[self.group, self.consumer, count, *self.ids.values()],
            )
        except ResponseError as exc:
            if lost_group(exc):
                raise
            self.packed = False
            logger.warning(
                "taskiq_batching: reading %s without the packed-read script "
                "(%s); each entry is parsed by redis-py",
                next(iter(self.ids)),
                exc,
            )
            return None
        return msgpack.unpackb(blob, raw=True) if blob else None


def lost_group(error: ResponseError) -> bool:
    """Whether a read failed because its stream or consumer group is gone.

    ``NOGROUP`` for a deleted group or a Redis restarted without them;
    ``UNBLOCKED ... no longer exists`` for a stream deleted under a
    blocked read (Redis 7).

    :param error: what the server answered.
    :return: True when the group must be created again.
    """
    text = str(error)
    return "NOGROUP" in text or ("UNBLOCKED" in text and "no longer exists" in text)


def entries(reply: Any) -> Iterator[tuple[str, bytes, bytes]]:
    """The ``(stream, entry id, data)`` of each entry of a reply, in order.

    :param reply: an XREADGROUP reply, packed or not.
    :yield: each entry (deleted entries, whose id comes alone, are skipped).
    """
    if not reply:
        return
    streams = reply.items() if isinstance(reply, dict) else reply
    for raw_stream, raw_entries in streams:
        stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
        found = raw_entries
        if len(found) == 1 and _is_entries(found[0]):
            found = found[0]
        for entry_id, fields in found:
            if entry_id is not None:
                yield stream, entry_id, _field(fields, b"data")


def _is_entries(value: Any) -> bool:
    """Whether ``value`` is a list of entries rather than one entry."""
    return isinstance(value, list) and (
        not value or isinstance(value[0], (list, tuple))
    )


def _field(fields: Any, name: bytes) -> bytes:
    """A field's value: fields as a dict (redis-py) or a flat list (packed).

    An entry without it (written by someone else) gets empty data, which
    the worker hands to taskiq, which reports and acks it as undecodable.
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
