"""Sending many messages to a Redis stream or list: each added once, or reported.

redis-py retries a pipeline whose connection failed (and so does its
cluster client, after a topology refresh): the commands it had written
may have run already, and a plain ``XADD`` or ``LPUSH`` sent again adds
its messages again. So the messages are sent in chunks, each one script
that first marks the chunk as sent (a key of its own, expiring after
``MARKER_TTL``) and adds nothing when the mark is already there: a chunk
sent again is a no-op, whatever retried it.

A Redis user that may not run scripts (an ACL without ``@scripting``)
gets the same guarantee without them: each chunk is one ``MULTI``
transaction that sets the mark and adds the messages, under ``WATCH`` of
the mark, which is read first. redis-py never re-sends a transaction
whose watched connection failed (it raises ``WatchError``), so a chunk
runs at most once there too.

When a chunk still fails (the server stays away, or refuses it), its
mark tells what happened: a mark says the chunk was added; no mark is
replaced by one that voids the chunk, so that it is surely not added
later (a retry or a late write reaching the server). The caller is told
which messages were not sent (``SendManyError``); none was sent twice.

The mark lives in the queue's hash slot (see ``same_slot``), so that a
cluster runs the script on the queue's node.
"""

import binascii
import itertools
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, WatchError
from taskiq import BrokerMessage

from taskiq_batching.error_texts import describe
from taskiq_batching.errors import SendManyError
from taskiq_batching.transports.redis_common import RedisClient

#: Messages per script: each blocks the server while it runs.
SEND_CHUNK = 500
#: Seconds a chunk's mark is kept: longer than any retry of its send.
MARKER_TTL = 3600

#: A chunk's mark is set first, before anything is added: a chunk whose
#: mark is there was added (or voided, and never will be). The key's type
#: is checked before anything is written, so a wrong key changes nothing.
_MARK = """
local mark = redis.call('GET', KEYS[2])
if mark == 'void' then return redis.error_reply('VOIDED this chunk was given up') end
if mark then return 0 end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= ARGV[2] then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind)
end
redis.call('SET', KEYS[2], 'sent', 'EX', ARGV[1])
"""

#: XADD ARGV[5..] (field ``data``) to stream KEYS[1], with MAXLEN ARGV[4]
#: (ARGV[3]: ``~`` or ``=``) unless ARGV[4] is empty, once per mark KEYS[2].
STREAM_ONCE = (
    _MARK
    + """
local command = {'XADD', KEYS[1]}
if ARGV[4] ~= '' then command = {'XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[4]} end
local n = #command
for i = 5, #ARGV do
  command[n + 1] = '*'
  command[n + 2] = 'data'
  command[n + 3] = ARGV[i]
  redis.call(unpack(command))
end
return #ARGV - 4
"""
)

#: LPUSH ARGV[3..] to list KEYS[1], once per mark KEYS[2].
LIST_ONCE = (
    _MARK
    + """
redis.call('LPUSH', KEYS[1], unpack(ARGV, 3))
return #ARGV - 2
"""
)


_SLOTS = 16384


def _slot(data: bytes) -> int:
    # Redis Cluster's key hash: CRC16 (XMODEM), which binascii computes.
    return binascii.crc_hqx(data, 0) % _SLOTS


def _own_tag(key: str) -> str | None:
    start = key.find("{")
    end = key.find("}", start + 1)
    if start == -1 or end <= start + 1:
        return None
    return key[start : end + 1]


def same_slot(key: str) -> str:
    """A hash tag (``{...}``) that puts a key in ``key``'s cluster slot.

    :param key: a key (a queue's name).
    :return: the key's own tag, the key in braces, or a tag found to match.
    """
    own = _own_tag(key)
    if own is not None:
        return own
    if "}" not in key:  # the whole key is hashed, and so is this tag's content
        return "{" + key + "}"
    slot = _slot(key.encode())
    return next(
        tag
        for tag in (f"{{{n}}}" for n in itertools.count())
        if _slot(tag[1:-1].encode()) == slot
    )


@dataclass(slots=True)
class Chunk:
    """Messages sent by one script: their positions, queue and mark."""

    queue: str
    positions: list[int]
    mark: str


def chunks(
    messages: Sequence[BrokerMessage], default_queue: str, size: int = SEND_CHUNK
) -> list[Chunk]:
    """The messages by queue (a ``queue_name`` label, as ``kick`` reads it).

    :param messages: the messages, in order.
    :param default_queue: the broker's queue.
    :param size: messages per chunk at most.
    :return: chunks of at most ``size`` messages, in order within a queue.
    """
    by_queue: defaultdict[str, list[int]] = defaultdict(list)
    for position, message in enumerate(messages):
        by_queue[str(message.labels.get("queue_name") or default_queue)].append(
            position
        )
    token = uuid.uuid4().hex
    found: list[Chunk] = []
    for queue, positions in by_queue.items():
        tag = same_slot(queue)
        for start in range(0, len(positions), size):
            mark = f"{tag}:taskiq-batching:sent:{token}:{len(found)}"
            found.append(Chunk(queue, positions[start : start + size], mark))
    return found


async def send_once(
    client: RedisClient,
    messages: Sequence[BrokerMessage],
    parts: Sequence[Chunk],
    script: str,
    options: Sequence[Any],
) -> None:
    """Send every chunk with ``script``; each message is added at most once.

    :param client: the transport's client (standalone, sentinel or
        cluster); it remembers whether its user may run scripts.
    :param messages: the messages the chunks' positions refer to.
    :param parts: the chunks.
    :param script: ``STREAM_ONCE`` or ``LIST_ONCE``.
    :param options: the script's arguments before the payloads.
    :raises SendManyError: some messages were not sent (or perhaps not).
    """
    redis = client.redis
    failed: dict[int, BaseException] = {}
    if client.scripts_refused:
        failed = await _send_watched(redis, messages, parts, options)
        if failed:
            await report_failed(redis, messages, parts, failed)
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for part in parts:
                payloads = [messages[i].message for i in part.positions]
                pipe.eval(
                    script, 2, part.queue, part.mark, MARKER_TTL, *options, *payloads
                )
            replies = await pipe.execute(raise_on_error=False)
    except Exception as exc:
        failed = dict.fromkeys(range(len(parts)), exc)
    else:
        failed = {
            index: reply
            for index, reply in enumerate(replies)
            if isinstance(reply, BaseException)
        }
    if failed and all(isinstance(e, NoPermissionError) for e in failed.values()):
        # Refused before running: nothing of these chunks was added.
        client.scripts_refused = True
        retry = [parts[i] for i in failed]
        again = await _send_watched(redis, messages, retry, options)
        parts = [retry[i] for i in again]
        failed = dict(enumerate(again.values()))
    if failed:
        await report_failed(redis, messages, parts, failed)


async def report_failed(
    redis: Any,
    messages: Sequence[BrokerMessage],
    parts: Sequence[Chunk],
    failed: dict[int, BaseException],
) -> None:
    """Ask each failed chunk's mark what became of it; raise ``SendManyError``.

    :param redis: the client.
    :param messages: the messages the chunks' positions refer to.
    :param parts: the chunks.
    :param failed: the chunks that failed, by index in ``parts``, with the error.
    :raises SendManyError: some messages were not sent (or perhaps not).
    """
    not_sent: list[int] = []
    unknown: list[int] = []
    verdicts: list[Any] = []
    for index in failed:
        verdicts.append(await _verdict(redis, parts[index].mark))
    for index, verdict in zip(failed, verdicts, strict=True):
        if verdict in (b"void", "void"):
            not_sent.extend(parts[index].positions)
        elif verdict not in (b"sent", "sent"):
            unknown.extend(parts[index].positions)
    if not_sent or unknown:
        raise SendManyError(
            describe(next(iter(failed.values()))),
            [message.task_id for message in messages],
            sorted(not_sent),
            sorted(unknown),
        )


async def _verdict(redis: Any, mark: str) -> Any:
    """A chunk's mark, or, when it has none, a mark that voids it.

    ``SET NX`` sets the void mark only when no send set its own first, so
    a late copy of the send finds it and adds nothing.
    """
    try:
        if await redis.set(mark, "void", ex=MARKER_TTL, nx=True):
            return b"void"
        return await redis.get(mark)
    except Exception:  # the server is still away: nothing more is known
        return None


async def _send_watched(
    redis: Any,
    messages: Sequence[BrokerMessage],
    parts: Sequence[Chunk],
    options: Sequence[Any],
) -> dict[int, BaseException]:
    """Send each chunk as a transaction under ``WATCH`` of its mark (no script).

    :return: the chunks that failed, by index in ``parts``, with the error.
    """
    failed: dict[int, BaseException] = {}
    for index, part in enumerate(parts):
        payloads = [messages[i].message for i in part.positions]
        try:
            await _watched_chunk(redis, part, payloads, options)
        except Exception as exc:
            failed[index] = exc
    return failed


async def _watched_chunk(
    redis: Any, part: Chunk, payloads: list[bytes], options: Sequence[Any]
) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(part.mark)
        mark = await pipe.get(part.mark)
        if mark in (b"void", "void"):
            raise WatchError("this chunk was given up")
        if mark is not None:
            return  # added by an earlier try
        pipe.multi()
        pipe.set(part.mark, "sent", ex=MARKER_TTL)
        if options[0] == "list":
            pipe.lpush(part.queue, *payloads)
        else:
            maxlen = int(options[2]) if options[2] else None
            for payload in payloads:
                pipe.xadd(
                    part.queue,
                    {b"data": payload},
                    maxlen=maxlen,
                    approximate=options[1] == "~",
                )
        await pipe.execute()
