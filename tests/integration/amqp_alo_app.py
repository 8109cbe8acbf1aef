"""The app a real ``taskiq worker`` runs in the AMQP lost-channel tests.

taskiq-aio-pika's ``AioPikaBroker`` as shipped (read through the AMQP
transport) on ``RABBITMQ_URL``, its connections named ``<queue>-worker``
(so a test can close them with ``rabbitmqctl``); results and records in
``REDIS_URL``. ``TB_QUEUE`` names the exchange, the queue and the Redis
keys; ``TB_QOS`` is the prefetch. The batched task ``collect``
(``TB_BATCH_SIZE``, size-only) pushes ``{"items": [...]}`` to
``{queue}:started`` when a batch starts, then waits for a token on
``{queue}:go`` (the test lets batches go on), then pushes the same record
to ``{queue}:batches``.
"""

import json
import os

from redis.asyncio import Redis
from taskiq import AsyncBroker

from tests.integration.app_brokers import RABBITMQ_URL, REDIS_URL, amqp_broker

#: Longest a batch waits for its token, in seconds.
GO_TIMEOUT = 40


def make_broker(
    rabbitmq_url: str, redis_url: str, queue: str, qos: int, name: str
) -> AsyncBroker:
    """Build the broker the worker (and, named otherwise, the producer) uses."""
    return amqp_broker(
        rabbitmq_url, redis_url, queue, qos, client_properties={"connection_name": name}
    )


QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-amqp-alo")
broker = make_broker(
    RABBITMQ_URL,
    REDIS_URL,
    QUEUE,
    int(os.environ.get("TB_QOS", "100")),
    f"{QUEUE}-worker",
)
_log = Redis.from_url(REDIS_URL)


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "10")),
)
async def collect(items: list[int]) -> list[int]:
    """Record the batch's start, wait for a token, record its end."""
    record = json.dumps({"items": items})
    await _log.rpush(f"{QUEUE}:started", record)
    for _ in range(GO_TIMEOUT):  # short waits: within any socket timeout
        if await _log.blpop([f"{QUEUE}:go"], timeout=1):
            break
    await _log.rpush(f"{QUEUE}:batches", record)
    return items
