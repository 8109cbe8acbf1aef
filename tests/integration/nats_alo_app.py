"""The app the NATS at-least-once tests run in real ``taskiq worker`` processes.

taskiq-nats's ``PullBasedJetStreamBroker`` on ``NATS_URL``, results and a
record of every batch in ``REDIS_URL``. ``TB_QUEUE`` names the stream,
its subject (``<queue>.tasks``), the durable consumer and the Redis keys.
The consumer's ``ack_wait`` is ``TB_ACK_WAIT`` seconds and its
``max_ack_pending`` ``TB_MAX_ACK_PENDING`` (unset: the server's default).
The batched task ``collect`` takes ``TB_BATCH_SIZE`` and
``TB_BATCH_TIMEOUT`` (``none``: size-only) and, with ``TB_KEYS`` = K,
``batch_key`` = item % K; each batch pushes
``{"items": [...], "pid": ...}`` to ``{queue}:started`` when it starts,
then runs ``TB_BATCH_DELAY`` seconds, then pushes the same record to
``{queue}:batches``. ``TB_WAIT_IN_BROKER`` set:
``BatchingMiddleware(wait_in_broker=True)`` (a lease per batched task).
"""

import asyncio
import json
import os

from redis.asyncio import Redis

from tests.integration.app_brokers import NATS_URL, REDIS_URL, nats_broker

#: The broker both the worker and the test's producer use.
make_broker = nats_broker

QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-nats-alo")
_pending = os.environ.get("TB_MAX_ACK_PENDING")
_timeout = os.environ.get("TB_BATCH_TIMEOUT", "none")
DELAY = float(os.environ.get("TB_BATCH_DELAY", "0"))
broker = make_broker(
    NATS_URL,
    REDIS_URL,
    QUEUE,
    float(os.environ.get("TB_ACK_WAIT", "30")),
    int(_pending) if _pending else None,
)
_log = Redis.from_url(REDIS_URL)
KEYS = int(os.environ.get("TB_KEYS", "0"))


def key_of(item: int) -> int:
    """The ``batch_key`` with ``TB_KEYS`` set."""
    return item % KEYS


_keyed = {"batch_key": key_of} if KEYS else {}


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
    batch_timeout=None if _timeout == "none" else float(_timeout),
    **_keyed,
)
async def collect(items: list[int]) -> list[int]:
    """Record the batch's start, run ``TB_BATCH_DELAY`` s, record its end."""
    record = json.dumps({"items": items, "pid": os.getpid()})
    await _log.rpush(f"{QUEUE}:started", record)
    await asyncio.sleep(DELAY)
    await _log.rpush(f"{QUEUE}:batches", record)
    return items
