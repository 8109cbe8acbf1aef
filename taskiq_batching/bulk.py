"""Sending, storing and acking many messages in few round trips.

For the broker and result backend it knows (taskiq-redis's stream broker
and Redis result backend) this writes what their own per-message methods
would write, pipelined; for any other it calls those methods concurrently.
It relies on attributes of taskiq-redis's classes and on how its stream
acks are built: ``tests/unit/test_bulk.py`` checks the equivalence
against the supported taskiq-redis versions, and anything unrecognised
takes the generic path.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncResultBackend, BrokerMessage, TaskiqResult
from taskiq.utils import maybe_awaitable
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

logger = logging.getLogger("taskiq_batching")

Ack = Callable[[], Awaitable[None] | None]

#: Messages sent at once by a broker without a pipelined path.
KICK_CONCURRENCY = 100

#: SET of each of KEYS, as RedisAsyncResultBackend.set_result does one by
#: one. ARGV[1]: EX seconds, ARGV[2]: PX milliseconds (0 for none), ARGV[3]:
#: the number n of distinct values, ARGV[4..3+n]: the values; then, when
#: n > 1, the 1-based index of each key's value.
_SET_MANY = """
local ex, px, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS do
  local value = ARGV[4]
  if n > 1 then value = ARGV[3 + tonumber(ARGV[3 + n + i])] end
  if ex > 0 then
    redis.call('SET', KEYS[i], value, 'EX', ex)
  elseif px > 0 then
    redis.call('SET', KEYS[i], value, 'PX', px)
  else
    redis.call('SET', KEYS[i], value)
  end
end
return #KEYS
"""

#: XADD of every payload in ARGV[3..], as RedisStreamBroker.kick does one
#: by one (ARGV[1]: maxlen, 0 for none; ARGV[2]: 1 for approximate trim).
_XADD_MANY = """
local maxlen = tonumber(ARGV[1])
for i = 3, #ARGV do
  if maxlen > 0 and ARGV[2] == '1' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'data', ARGV[i])
  elseif maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, '*', 'data', ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
  end
end
return #ARGV - 2
"""


async def store_many(
    backend: AsyncResultBackend[Any],
    results: Sequence[tuple[str, TaskiqResult[Any]]],
) -> list[str]:
    """Store each result under its task_id, as ``backend.set_result`` would.

    A pipelined write that fails (a dropped connection, say) is redone one
    result at a time, so that one failure costs only its own result.

    :param backend: the broker's result backend.
    :param results: ``(task_id, result)`` pairs.
    :return: the task_ids whose result could not be stored.
    """
    if not results:
        return []
    if type(backend) is RedisAsyncResultBackend:
        try:
            await _redis_store_many(backend, results)
        except Exception as exc:
            logger.warning("taskiq_batching: pipelined result write failed: %r", exc)
        else:
            return []
    stored = await asyncio.gather(
        *(backend.set_result(task_id, result) for task_id, result in results),
        return_exceptions=True,
    )
    failed = []
    for (task_id, _), outcome in zip(results, stored, strict=True):
        if isinstance(outcome, BaseException):
            logger.error(
                "taskiq_batching: cannot store the result of %s: %r",
                task_id,
                outcome,
            )
            failed.append(task_id)
    return failed


async def _redis_store_many(
    backend: RedisAsyncResultBackend[Any],
    results: Sequence[tuple[str, TaskiqResult[Any]]],
) -> None:
    ex = backend.result_ex_time or 0
    px = 0 if ex else (backend.result_px_time or 0)
    keys = [backend._task_name(task_id) for task_id, _ in results]
    # Messages of a batch often share one result object: serialize it once.
    positions: dict[int, int] = {}
    values: list[bytes] = []
    chosen: list[int] = []
    for _, result in results:
        position = positions.get(id(result))
        if position is None:
            position = positions[id(result)] = len(values) + 1
            values.append(backend.serializer.dumpb(result.model_dump(mode="json")))
        chosen.append(position)
    args: list[Any] = [ex, px, len(values), *values]
    if len(values) > 1:
        args.extend(chosen)
    async with Redis(connection_pool=backend.redis_pool) as redis:
        # One command whatever the count: one reply to parse.
        set_many = redis.register_script(_SET_MANY)
        await set_many(keys=keys, args=args)


async def ack_many(broker: Any, acks: Sequence[Ack]) -> None:
    """Run every ack; one XACK per stream for taskiq-redis stream messages.

    :param broker: the broker the messages came from.
    :param acks: the messages' ack callables.
    """
    by_stream: defaultdict[str, list[Any]] = defaultdict(list)
    others: list[Ack] = []
    for ack in acks:
        entry = stream_entry(ack) if isinstance(broker, RedisStreamBroker) else None
        if entry is None:
            others.append(ack)
        else:
            by_stream[entry[0]].append(entry[1])
    if by_stream and isinstance(broker, RedisStreamBroker):
        try:
            async with Redis(connection_pool=broker.connection_pool) as redis:
                pipe = redis.pipeline(transaction=False)
                for stream, ids in by_stream.items():
                    pipe.xack(stream, broker.consumer_group_name, *ids)
                await pipe.execute()
        except Exception as exc:
            logger.warning("taskiq_batching: pipelined ack failed: %r", exc)
            others = list(acks)
    if others:
        acked = await asyncio.gather(
            *(maybe_awaitable(ack()) for ack in others),
            return_exceptions=True,
        )
        failures = [outcome for outcome in acked if isinstance(outcome, BaseException)]
        if failures:
            # Unacked, they will be delivered again: at least once.
            logger.error(
                "taskiq_batching: %d ack(s) failed, first: %r",
                len(failures),
                failures[0],
            )


def stream_entry(ack: Ack) -> tuple[str, Any] | None:
    """The (stream, entry id) a taskiq-redis stream ack acknowledges, if known.

    :param ack: an ack built by ``RedisStreamBroker`` (or by our reclaimer).
    :return: the stream and the entry id, or None for any other callable.
    """
    entry = getattr(ack, "stream_entry", None)  # our reclaimer's acks
    if isinstance(entry, tuple):
        return entry
    code = getattr(ack, "__code__", None)
    cells = getattr(ack, "__closure__", None)
    if code is None or cells is None or code.co_name != "_ack":
        return None
    try:
        closed = dict(
            zip(code.co_freevars, [c.cell_contents for c in cells], strict=True)
        )
    except ValueError:  # an empty cell
        return None
    stream, entry_id = closed.get("queue_name"), closed.get("id")
    if isinstance(stream, (str, bytes)) and isinstance(entry_id, (str, bytes)):
        return (stream.decode() if isinstance(stream, bytes) else stream, entry_id)
    return None


async def kick_many(broker: AsyncBroker, messages: Sequence[BrokerMessage]) -> None:
    """Send messages as ``broker.kick`` would, pipelined where known.

    :param broker: the broker.
    :param messages: formatted messages, in sending order.
    """
    # Exact types: a subclass may send differently.
    redis_broker = type(broker) in (RedisStreamBroker, ListQueueBroker)
    if redis_broker and isinstance(broker, (RedisStreamBroker, ListQueueBroker)):
        queues: defaultdict[str, list[bytes]] = defaultdict(list)
        for message in messages:
            queue = message.labels.get("queue_name") or broker.queue_name
            queues[str(queue)].append(message.message)
        async with Redis(connection_pool=broker.connection_pool) as redis:
            pipe = redis.pipeline(transaction=False)
            for queue, payloads in queues.items():
                if isinstance(broker, RedisStreamBroker):
                    # One command whatever the count: one reply to parse.
                    maxlen = broker.maxlen or 0
                    approximate = int(broker.approximate)
                    xadd_many = redis.register_script(_XADD_MANY)
                    await xadd_many(keys=[queue], args=[maxlen, approximate, *payloads])
                else:
                    # LPUSH of many values pushes them in order, as one LPUSH each.
                    pipe.lpush(queue, *payloads)
            await pipe.execute()
        return
    for start in range(0, len(messages), KICK_CONCURRENCY):
        chunk = messages[start : start + KICK_CONCURRENCY]
        await asyncio.gather(*(broker.kick(message) for message in chunk))
