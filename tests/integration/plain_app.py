"""A worker app with slow plain tasks next to a batched one (list broker).

``taskiq worker tests.integration.plain_app:broker``, configured by
``REDIS_URL`` and ``TB_QUEUE``. ``slow`` records in Redis how many of it
run at once (``{queue}:peak``) and each one that ran (``{queue}:ran``).
"""

import asyncio
import os

from redis.asyncio import Redis
from taskiq_redis import ListQueueBroker

from taskiq_batching import BatchingMiddleware

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-plain")

broker = ListQueueBroker(URL, queue_name=QUEUE).with_middlewares(BatchingMiddleware())
_log = Redis.from_url(URL)

#: INCR the running count and keep its peak, atomically.
_ENTER = """
local now = redis.call('INCR', KEYS[1])
local peak = tonumber(redis.call('GET', KEYS[2]) or '0')
if now > peak then redis.call('SET', KEYS[2], now) end
return now
"""


@broker.task(task_name="slow")
async def slow(item: int) -> None:
    """A plain task that takes a while."""
    await _log.eval(_ENTER, 2, f"{QUEUE}:running", f"{QUEUE}:peak")
    await asyncio.sleep(0.3)
    await _log.decr(f"{QUEUE}:running")
    await _log.rpush(f"{QUEUE}:ran", item)


@broker.task(task_name="batched", batch=True, batch_size=10, batch_timeout=1)
async def batched(items: list[int]) -> int:
    """The batched task that makes the plugin active on this worker."""
    return len(items)
