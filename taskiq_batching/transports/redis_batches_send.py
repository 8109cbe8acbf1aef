"""Moving batched messages to their task's key streams in Redis.

A producer with the plugin sends there (``send``: ``kiq`` as one
``MULTI``, ``kiq_many`` as a script per chunk that adds nothing twice,
marked as ``redis_send``'s chunks are); a worker forwards what a plain
producer put on the main stream, or gives a taken entry back (``move``:
one ``MULTI`` that adds, wakes and acks). Every add names the key in the
task's sorted set (``ZADD NX``) and adds to the wake stream (``MAXLEN
1``), so that a worker blocked waiting wakes.
"""

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_batches_names import (
    TaskEntry,
    TaskStreams,
    entry_ms,
)
from taskiq_batching.transports.redis_send import (
    MARKER_TTL,
    SEND_CHUNK,
    Chunk,
    report_failed,
)

#: A producer's chunk, added once per mark. KEYS: the mark, the keys'
#: sorted set, the wake stream, then one stream per key. ARGV: the mark's
#: ttl, the number of keys n, the n keys (key i's stream is KEYS[3 + i]),
#: the stream's MAXLEN (empty: none), then pairs (key index, message).
SEND_ONCE = """
local mark = redis.call('GET', KEYS[1])
if mark == 'void' then return redis.error_reply('VOIDED this chunk was given up') end
if mark then return 0 end
-- nothing is written before every key is known to take its writes
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  local want = 'stream'
  if i == 2 then want = 'zset' end
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. kind)
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('SET', KEYS[1], 'sent', 'EX', ARGV[1])
local n = tonumber(ARGV[2])
local maxlen = ARGV[3 + n]
for j = 4 + n, #ARGV, 2 do
  local stream = KEYS[3 + tonumber(ARGV[j])]
  if maxlen ~= '' then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'data', ARGV[j + 1])
  else
    redis.call('XADD', stream, '*', 'data', ARGV[j + 1])
  end
end
for i = 1, n do redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2 + i]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'w', '1')
return (#ARGV - 3 - n) / 2
"""

#: A delivery to move, its task's names and its key.
Move = tuple[Delivery, TaskStreams, str]


async def move(
    redis: Any, group: str, maxlen: int | None, moves: Sequence[Move], acks_too: bool
) -> None:
    """Add deliveries to their key streams with their send time; ack the originals.

    :param redis: the client.
    :param group: the consumer group the originals were delivered to.
    :param maxlen: the broker's ``maxlen`` (None: no trimming).
    :param moves: what to move (one task's, on a cluster).
    :param acks_too: ack in the same ``MULTI`` (False on a cluster, where
        the main stream lives in another slot: acked right after).
    :raises Exception: what Redis answered (nothing was moved when the
        ``MULTI`` failed).
    """
    acks: defaultdict[str, list[bytes]] = defaultdict(list)
    deletes: defaultdict[str, list[bytes]] = defaultdict(list)
    async with redis.pipeline(transaction=True) as pipe:
        wakes: dict[str, None] = {}
        for delivery, names, key in moves:
            handle = delivery.handle
            stream, entry_id = handle
            task_entry = isinstance(handle, TaskEntry)
            sent_ms = handle.sent_ms if task_entry else entry_ms(entry_id)
            pipe.xadd(
                names.stream(key),
                {b"data": delivery.data, b"t": str(sent_ms).encode()},
                maxlen=maxlen,
                approximate=True,
            )
            pipe.zadd(names.keys, {key: sent_ms}, nx=True)
            wakes[names.wake] = None
            acks[stream].append(entry_id)
            if task_entry:  # acked entries of a key stream are deleted
                deletes[stream].append(entry_id)
        for wake in wakes:
            pipe.xadd(wake, {b"w": b"1"}, maxlen=1, approximate=False)
        if acks_too:
            _acks(pipe, group, acks, deletes)
        await pipe.execute()
    if not acks_too:
        async with redis.pipeline(transaction=False) as pipe:
            _acks(pipe, group, acks, deletes)
            await pipe.execute()


def _acks(
    pipe: Any,
    group: str,
    acks: dict[str, list[bytes]],
    deletes: dict[str, list[bytes]],
) -> None:
    for stream, ids in acks.items():
        pipe.xack(stream, group, *ids)
    for stream, ids in deletes.items():
        pipe.xdel(stream, *ids)


async def send(
    redis: Any,
    names: TaskStreams,
    messages: Sequence[BrokerMessage],
    keys: Sequence[str],
    maxlen: int | None,
    once: bool,
) -> None:
    """Send one task's messages to their key streams.

    :param redis: the client.
    :param names: the task's names.
    :param messages: the messages, in order.
    :param keys: each message's key (``broker_key``).
    :param maxlen: the broker's ``maxlen`` (None: no trimming).
    :param once: add each message at most once, whatever retries the
        send (a marked script per chunk, ``kiq_many``); else one ``MULTI``
        (``kiq``: what a plain ``XADD`` risks, no more).
    :raises SendManyError: (``once``) some messages were not sent.
    """
    if not once:
        async with redis.pipeline(transaction=True) as pipe:
            for message, key in zip(messages, keys, strict=True):
                pipe.xadd(
                    names.stream(key),
                    {b"data": message.message},
                    maxlen=maxlen,
                    approximate=True,
                )
            now_ms = int(time.time() * 1000)
            pipe.zadd(names.keys, dict.fromkeys(keys, now_ms), nx=True)
            pipe.xadd(names.wake, {b"w": b"1"}, maxlen=1, approximate=False)
            await pipe.execute()
        return
    await send_by_key(
        redis, names, messages, keys, SEND_ONCE, "" if maxlen is None else maxlen
    )


def chunk_call(
    names: TaskStreams,
    part: Chunk,
    payloads: Sequence[bytes],
    keys: Sequence[str],
    option: Any,
    ttl: int = MARKER_TTL,
) -> list[Any]:
    """One chunk's script call: the number of keys, the keys, the arguments.

    The layout ``SEND_ONCE`` and ``LIST_PUT`` share. KEYS: the mark, the
    keys' sorted set, the wake stream, one queue per key. ARGV: the mark's
    ttl (``LIST_PUT``: 0, no mark), the number of keys n, the n keys,
    ``option`` (a stream's MAXLEN), then pairs (key index, message).

    :param names: the task's names.
    :param part: the chunk.
    :param payloads: the messages' bytes its positions refer to.
    :param keys: each message's key.
    :param option: the script's own argument.
    :param ttl: the mark's ttl in seconds.
    :return: ``[numkeys, *keys, *argv]``.
    """
    chunk_keys = list(dict.fromkeys(keys[i] for i in part.positions))
    index = {key: n for n, key in enumerate(chunk_keys, start=1)}
    argv: list[Any] = [ttl, len(chunk_keys), *chunk_keys, option]
    for i in part.positions:
        argv += [index[keys[i]], payloads[i]]
    queues = [names.stream(key) for key in chunk_keys]
    return [3 + len(queues), part.mark, names.keys, names.wake, *queues, *argv]


def task_chunks(names: TaskStreams, count: int) -> list[Chunk]:
    """A send's chunks of one task, each with a mark in the task's slot.

    :param names: the task's names.
    :param count: the messages sent.
    :return: the chunks, in order.
    """
    token = uuid.uuid4().hex
    tag = names.keys[: names.keys.index("}") + 1]
    return [
        Chunk(
            names.keys,
            list(range(start, min(start + SEND_CHUNK, count))),
            f"{tag}:taskiq-batching:sent:{token}:{start}",
        )
        for start in range(0, count, SEND_CHUNK)
    ]


async def send_by_key(
    redis: Any,
    names: TaskStreams,
    messages: Sequence[BrokerMessage],
    keys: Sequence[str],
    script: str,
    option: Any,
) -> None:
    """Send one task's messages to their keys' queues, each at most once.

    :param redis: the client.
    :param names: the task's names.
    :param messages: the messages, in order.
    :param keys: each message's key.
    :param script: ``SEND_ONCE`` or ``LIST_PUT`` (``chunk_call``'s layout).
    :param option: the script's own argument.
    :raises SendManyError: some messages were not sent.
    """
    parts = task_chunks(names, len(messages))
    payloads = [message.message for message in messages]
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for part in parts:
                pipe.eval(script, *chunk_call(names, part, payloads, keys, option))
            replies = await pipe.execute(raise_on_error=False)
    except Exception as exc:
        failed: dict[int, BaseException] = dict.fromkeys(range(len(parts)), exc)
    else:
        failed = {
            index: reply
            for index, reply in enumerate(replies)
            if isinstance(reply, BaseException)
        }
    if failed:
        await report_failed(redis, messages, parts, failed)
