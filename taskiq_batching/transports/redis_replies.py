"""Reading a stream: one plain XREADGROUP, its reply as hiredis parsed it.

A plain ``XREADGROUP`` (with ``BLOCK``, which answers at once when
entries wait), its reply taken as redis-py's C parser (hiredis, in the
``[redis]`` extra; without it the generic transport reads) gives it,
without redis-py's per-entry conversion: no script runs on the server.

Replies come as the parser gives them (``[[stream, [[id, [field, value,
...]]]]]``, or a dict of ``stream: entries`` with RESP3) or converted by
redis-py (a cluster client, which is the broker's and not this reader's
to change), whose shape depends on its protocol and version: a list of
``[stream, entries]`` or a dict of ``stream: entries``, the entries
possibly wrapped in one more list, each ``(id, {field: value})``.
``by_stream`` reads them all.
"""

from collections.abc import Iterator
from typing import Any

from redis.exceptions import ResponseError

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_wire import command, round_trip


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
        self.cluster = cluster
        #: The packed read, per ``COUNT`` and ids read from.
        self._packed: dict[tuple[Any, ...], bytes] = {}
        if not cluster:
            # Entries are read from the lists the parser gives; converting
            # each to a tuple and a dict first is work thrown away.
            redis.set_response_callback("XREADGROUP", _as_parsed)

    async def read(self, count: int) -> Any:
        """The next entries, at most ``count`` of each stream.

        Off a cluster, the command is packed by hand once per ``count`` and
        sent in a round trip of ``redis_wire`` (one timer, no task, no
        arguments encoded per read); redis-py retries it the same way.

        :param count: ``COUNT`` of the read.
        :raises ResponseError: what the server answered (``NOGROUP`` ...).
        :return: the reply (``by_stream`` reads it).
        """
        if self.cluster or count < 1:  # (redis-py refuses a COUNT below 1)
            return await self.redis.xreadgroup(
                self.group, self.consumer, self.ids, count=count, block=self.block
            )
        key = (count, *self.ids.items())
        packed = self._packed.get(key)
        if packed is None:
            packed = self._pack(count)
            if len(self._packed) >= 64:  # few counts are ever read
                self._packed.clear()
            self._packed[key] = packed
        (reply,) = await round_trip(self.redis, [packed], 1)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _pack(self, count: int) -> bytes:
        """XREADGROUP with ``COUNT`` and ``BLOCK``, encoded as redis-py encodes it."""
        encode = self.redis.get_encoder().encode
        args = [b"XREADGROUP", b"GROUP", self.group, self.consumer]
        args += [b"COUNT", str(count), b"BLOCK", str(self.block), b"STREAMS"]
        args += [*self.ids.keys(), *self.ids.values()]
        return command([encode(arg) for arg in args])

    async def read_pending(self, count: int) -> Any:
        """The consumer's pending entries, from each stream's start.

        :param count: ``COUNT`` of the read.
        :return: the reply (``by_stream`` reads it).
        """
        pending = dict.fromkeys(self.ids, "0")
        return await self.redis.xreadgroup(
            self.group, self.consumer, pending, count=count
        )


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


def by_stream(reply: Any) -> Iterator[tuple[str, list[Delivery]]]:
    """Each stream of a reply with its entries as deliveries, in order.

    :param reply: an XREADGROUP reply.
    :yield: each stream with entries: its name, and a delivery per entry,
        its handle ``(stream, id)`` (deleted entries, whose id comes alone,
        are skipped).
    """
    for stream, found in streams(reply):
        # One pass per stream and no call per entry: it runs for every
        # message read. What taskiq-redis writes, as hiredis parses it
        # (``[b"data", payload]``), is taken in place; anything else (a
        # dict from redis-py, other fields) through ``data_of``.
        read = [
            Delivery(
                fields[1]
                if type(fields) is list
                and len(fields) == 2
                and fields[0] == b"data"
                and type(fields[1]) is bytes
                else data_of(fields),
                (stream, entry_id),
            )
            for entry_id, fields in found
            if entry_id is not None
        ]
        if read:
            yield stream, read


def streams(reply: Any) -> Iterator[tuple[str, Any]]:
    """Each stream of a reply with its entries, in order.

    :param reply: an XREADGROUP reply.
    :yield: each stream's name and its entries, ``(id, fields)`` each.
    """
    if not reply:
        return
    pairs = reply.items() if isinstance(reply, dict) else reply
    for raw_stream, raw_entries in pairs:
        stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
        found = raw_entries
        if len(found) == 1 and _is_entries(found[0]):
            found = found[0]
        yield stream, found


def _is_entries(value: Any) -> bool:
    """Whether ``value`` is a list of entries rather than one entry."""
    return isinstance(value, list) and (
        not value or isinstance(value[0], (list, tuple))
    )


def data_of(fields: Any) -> bytes:
    """An entry's ``data`` field: fields as a flat list (as parsed) or a dict.

    An entry without it (written by someone else) gets empty data, which
    the worker hands to taskiq, which reports and acks it as undecodable.
    """
    # What taskiq-redis writes, as hiredis parses it: checked first, by
    # type, as it runs once per message read.
    if type(fields) is list and len(fields) == 2 and fields[0] == b"data":
        value = fields[1]
        if type(value) is bytes:
            return value
    return _field(fields, b"data")


def _field(fields: Any, name: bytes) -> bytes:
    """A field's value: fields as a dict (redis-py) or a flat list (as parsed)."""
    value = None
    if isinstance(fields, dict):
        value = fields.get(name)
    elif isinstance(fields, list):
        value = dict(zip(fields[::2], fields[1::2], strict=False)).get(name)
    return value if isinstance(value, bytes) else b""
