"""A worker app whose plain tasks are still running when the worker stops.

``taskiq worker tests.integration.acks_app:broker``, a taskiq-redis stream
broker chosen by ``TB_VARIANT`` (``standalone``: ``REDIS_URL``;
``sentinel``: ``TB_SENTINELS`` host:port and ``TB_MASTER``; ``cluster``:
``REDIS_URL``), on queue ``TB_QUEUE``. ``slow`` adds its item to
``{queue}:started``, waits for a token on list ``{queue}:go``, then adds
it to ``{queue}:ran``; the batched task makes the plugin active. The log
records are counted on a plain Redis client of the test's choosing
(``TB_LOG_URL``), never through the broker's clients.
"""

import logging
import os

import redis
from redis.asyncio import Redis

from taskiq_batching import BatchingMiddleware
from tests.integration.stream_variants import QUEUE, URL, stream_broker

broker = stream_broker(dict(os.environ)).with_middlewares(BatchingMiddleware())
_log = Redis.from_url(os.environ.get("TB_LOG_URL", URL))


class _Stopping(logging.Handler):
    """Records in ``{queue}:stopping`` that the Receiver stops taking messages."""

    def emit(self, record: logging.LogRecord) -> None:
        if "Stopping prefetching" in record.getMessage():
            with redis.Redis.from_url(os.environ.get("TB_LOG_URL", URL)) as client:
                client.rpush(f"{QUEUE}:stopping", 1)


_receiver_log = logging.getLogger("taskiq.receiver.receiver")
_receiver_log.addHandler(_Stopping(logging.INFO))
_receiver_log.setLevel(logging.INFO)


@broker.task(task_name="slow")
async def slow(item: int) -> None:
    """A plain task that runs until the test lets it finish."""
    await _log.rpush(f"{QUEUE}:started", item)
    # Short blocking pops: each under redis-py's socket timeout.
    while not await _log.blpop([f"{QUEUE}:go"], timeout=1):
        pass
    await _log.rpush(f"{QUEUE}:ran", item)


@broker.task(task_name="batched", batch=True, batch_size=10, batch_timeout=1)
async def batched(items: list[int]) -> int:
    """The batched task that makes the plugin active on this worker."""
    return len(items)
