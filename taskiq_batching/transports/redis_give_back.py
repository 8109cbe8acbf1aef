"""Giving read messages back to the tail of a taskiq-redis queue (``Requeue``).

A stream entry is given back by one script per stream: each entry is
acked (``XACK``) and, only if the ack took it from this group's pending
entries, added again at the stream's end (``XADD``, the field taskiq-redis
reads, trimmed as the broker trims). The two happen at once or not at
all, and an entry another worker claimed meanwhile is not added twice:
nothing is lost, nothing runs twice. The new entry has a new id; the
stream transport keeps no send time, so a batch's ``batch_timeout``
counts from when a worker takes it, as for any entry.

A list forgets a message once popped: giving it back is an ``LPUSH``
(where taskiq-redis's ``kick`` pushes and from whose other end its
listener pops), all of a read's in one command, in order.
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from taskiq import BrokerMessage

from taskiq_batching.transports.delivery import Delivery

#: KEYS[1]: the stream; ARGV[1]: the group; ARGV[2]: MAXLEN ('' for none);
#: ARGV[3]: '~' or '='; then (entry id, data) pairs. Returns the number of
#: entries given back.
STREAM_GIVE_BACK = """
local given = 0
for i = 4, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    if ARGV[2] == '' then
      redis.call('XADD', KEYS[1], '*', 'data', ARGV[i + 1])
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[2], '*', 'data', ARGV[i + 1])
    end
    given = given + 1
  end
end
return given
"""

Given = Sequence[tuple[Delivery, BrokerMessage]]


async def give_back_entries(
    redis: Any, group: str, broker: Any, given: Given
) -> list[Delivery]:
    """Give stream entries back to the end of their streams (see the module).

    :param redis: the client.
    :param group: the consumer group that read them.
    :param broker: the stream broker (how it trims its stream).
    :param given: the deliveries (handles ``(stream, entry id)``).
    :return: none: an entry not given back was no longer this group's
        pending one (acked or deleted meanwhile).
    """
    by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
    for delivery, _ in given:
        stream, entry_id = delivery.handle
        by_stream[stream] += [entry_id, delivery.data]
    maxlen = getattr(broker, "maxlen", None)
    approximate = getattr(broker, "approximate", True)
    trim = ["" if maxlen is None else str(maxlen), "~" if approximate else "="]
    for stream, pairs in by_stream.items():
        await redis.eval(STREAM_GIVE_BACK, 1, stream, group, *trim, *pairs)
    return []


async def give_back_popped(redis: Any, queue: str, given: Given) -> list[Delivery]:
    """Push popped messages back where ``kick`` pushes, in order.

    :param redis: the client.
    :param queue: the list they were popped from.
    :param given: the deliveries.
    :return: none (a failure raises: none was pushed).
    """
    if given:
        await redis.lpush(queue, *[delivery.data for delivery, _ in given])
    return []
