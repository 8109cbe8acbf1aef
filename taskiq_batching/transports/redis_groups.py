"""Where a stream's lost consumer group is created again.

A group is lost with a Redis restarted without persistence (the stream
too: new entries make it again, with no group), a deleted stream, or a
deleted group (the stream survives, with the entries already acked).
Creating it at ``$`` skips every entry sent while it was missing; at
``0``, a surviving stream's retained entries all run again. So it is
created after the furthest entry known read that the stream still
holds: the last this worker read, or the mark its fleet publishes
(``redis_holding.mark_key``, one ``SET`` per tick of a worker that read
since its last tick). Every entry up to it was delivered before the
loss; the entries after it run (those the fleet read since its last
mark run again: a duplicate, never a loss). When no such entry is
known — the stream was made again, trimmed past it, or nobody read
anything yet — the group starts at the stream's beginning.
"""

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import ResponseError

from taskiq_batching.transports.redis_holding import mark_key

logger = logging.getLogger("taskiq_batching")

#: An entry id and its data (``data`` field), as read.
Seen = tuple[bytes, bytes]


def mark_of(entry_id: bytes, data: bytes) -> bytes:
    """The fleet's mark for an entry: its id and a digest of its data.

    A stream deleted and made again within one millisecond gives its new
    entries the ids of old ones: the digest tells them apart.

    :param entry_id: the entry's id.
    :param data: its ``data`` field.
    :return: ``<id>/<digest>``.
    """
    return entry_id + b"/" + _digest(data)


def entry_order(entry_id: Any) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as numbers, to compare two.

    :param entry_id: the id, bytes or str.
    :return: (milliseconds, sequence).
    """
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def furthest(seen: Seen | None, read: Seen) -> Seen:
    """The further of two entries read of one stream: never back.

    Entries read back at a stop (pending ones) are older than those read.

    :param seen: the furthest entry read so far, if any.
    :param read: an entry just read.
    :return: the further one.
    """
    if seen is None or entry_order(read[0]) >= entry_order(seen[0]):
        return read
    return seen


async def create_group(
    redis: Any, stream: str, group: str, seen: Seen | None
) -> bytes | str:
    """Create a lost group again where nothing sent since is skipped.

    :param redis: the client.
    :param stream: the stream.
    :param group: the consumer group.
    :param seen: the last entry this worker read of the stream, if any.
    :return: the id the group starts after (``"0"``: the beginning).
    """
    start = await restart_at(redis, stream, group, seen)
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # a sibling made it first: fine
            raise
    return start


async def create_groups(
    redis: Any,
    streams: Iterable[str],
    group: str,
    last_seen: Mapping[str, Seen],
    error: BaseException,
) -> None:
    """Create a consumer group lost on several streams again, and say where.

    Never at ``$``: a worker that had read nothing yet would skip every
    entry sent while the group was missing.

    :param redis: the client.
    :param streams: the streams the consumer reads.
    :param group: the consumer group.
    :param last_seen: per stream, the last entry this worker read.
    :param error: what said the group was lost.
    """
    starts: list[str] = []
    for stream in streams:
        start = await create_group(redis, stream, group, last_seen.get(stream))
        starts.append(f"{stream} after {describe_id(start)}")
    logger.warning(
        "taskiq_batching: consumer group %s was missing (%s); created again "
        "after the last entry known read, or at the start of a stream made "
        "again: %s",
        group,
        error,
        ", ".join(starts),
    )


async def restart_at(
    redis: Any, stream: str, group: str, seen: Seen | None
) -> bytes | str:
    """The furthest entry known read (here or by the fleet) the stream holds.

    :param redis: the client.
    :param stream: the stream.
    :param group: the consumer group.
    :param seen: the last entry this worker read of the stream, if any.
    :return: its id, or ``"0"`` when none is known.
    """
    known: list[bytes] = []
    if seen is not None and await _holds(redis, stream, *seen):
        known.append(seen[0])
    mark = await redis.get(mark_key(stream, group))
    if mark is not None:
        entry_id, _, digest = _bytes(mark).partition(b"/")
        if await _holds(redis, stream, entry_id, digest=digest):
            known.append(entry_id)
    return max(known, key=entry_order, default="0")


async def _holds(
    redis: Any,
    stream: str,
    entry_id: bytes,
    data: bytes | None = None,
    digest: bytes | None = None,
) -> bool:
    """Whether the stream holds this entry (this data): it was not made again."""
    found = await redis.xrange(stream, entry_id, entry_id, count=1)
    for _, fields in found:
        held = (fields or {}).get(b"data")
        if held is None:
            continue
        if data is not None and held != data:
            continue
        if digest is not None and _digest(held) != digest:
            continue
        return True
    return False


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).hexdigest().encode()


def describe_id(entry_id: Any) -> str:
    """An entry id as text, for a log line.

    :param entry_id: the id, bytes or str.
    :return: the text.
    """
    return _text(entry_id)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
