"""A stream ack packed by hand: ``XACK``, or ``XACK`` and ``XDEL`` in a ``MULTI``.

A batch's ack carries one id per message: packed here in RESP (as
``redis_wire`` packs SETs), each run of ids of one length joined at once,
rather than each id encoded on its own by redis-py. ``Pending`` sends it.
"""

from collections.abc import Sequence
from itertools import groupby

from taskiq_batching.transports.redis_wire import bulk


def xack_command(
    stream: bytes, group: bytes, ids: Sequence[bytes], delete: bool = False
) -> bytes | None:
    """An XACK in RESP (``redis_wire``), or None if an id is not bytes.

    :param stream: the stream's name, encoded.
    :param group: the consumer group's, encoded.
    :param ids: the entries' ids, as read (bytes; str from a client that
        decodes replies, which redis-py's own XACK then encodes).
    :param delete: ``MULTI``, the XACK, an ``XDEL`` of the same ids,
        ``EXEC`` instead (ack and delete: four replies).
    :return: the packed command(s).
    """
    if not _BYTES.issuperset(map(type, ids)):  # a str id: redis-py's XACK then
        return None
    # No step per id in Python (an ack has one per message of a batch): each
    # run of ids of one length (usually all of them) joined at once.
    packed = b"".join(
        [
            b"$%d\r\n" % length + (b"\r\n$%d\r\n" % length).join(run) + b"\r\n"
            for length, run in groupby(ids, len)
        ]
    )
    xack = b"*%d\r\n$4\r\nXACK\r\n" % (3 + len(ids)) + bulk(stream) + bulk(group)
    if not delete:
        return xack + packed
    xdel = b"*%d\r\n$4\r\nXDEL\r\n" % (2 + len(ids)) + bulk(stream)
    return _MULTI + xack + packed + xdel + packed + _EXEC


_BYTES = frozenset((bytes,))
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
