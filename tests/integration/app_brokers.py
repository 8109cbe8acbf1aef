"""What the AMQP and NATS worker apps share: their brokers, results and records.

``amqp_app.py``, ``amqp_alo_app.py``, ``nats_app.py`` and
``nats_alo_app.py`` each run in a real ``taskiq worker`` process, the
test's producer building the same broker. ``TB_QUEUE`` names the exchange
and queues (AMQP) or the stream, its subject and durable consumer (NATS),
and the Redis keys where results and batch records go.
"""

import json
import os
from typing import Any

from nats.js.api import ConsumerConfig
from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import BatchingMiddleware

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def amqp_broker(
    rabbitmq_url: str, redis_url: str, queue: str, qos: int, **options: Any
) -> AsyncBroker:
    """``AioPikaBroker`` on ``queue`` (and its dead-letter queue), batching.

    :param options: more of ``AioPikaBroker``'s arguments.
    """
    broker = AioPikaBroker(
        rabbitmq_url,
        qos=qos,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
        **options,
    )
    return batching(broker, redis_url, queue)


def nats_broker(
    nats_url: str,
    redis_url: str,
    queue: str,
    ack_wait: float,
    max_ack_pending: int | None = None,
) -> AsyncBroker:
    """``PullBasedJetStreamBroker`` on stream ``queue``, batching."""
    broker = PullBasedJetStreamBroker(
        nats_url,
        subject=f"{queue}.tasks",
        stream_name=queue,
        durable=queue,
        consumer_config=ConsumerConfig(
            durable_name=queue, ack_wait=ack_wait, max_ack_pending=max_ack_pending
        ),
    )
    return batching(broker, redis_url, queue)


def batching(broker: AsyncBroker, redis_url: str, queue: str) -> AsyncBroker:
    """The broker with results in Redis (keys prefixed ``queue``), batching."""
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url, prefix_str=queue, result_ex_time=600
    )
    # TB_WAIT_IN_BROKER set: batched tasks wait in the broker wherever the
    # transport can (``BatchingMiddleware(wait_in_broker=True)``).
    wait = True if os.environ.get("TB_WAIT_IN_BROKER") else None
    return broker.with_result_backend(backend).with_middlewares(
        BatchingMiddleware(wait_in_broker=wait)
    )


def declare_collect(broker: AsyncBroker, redis_url: str, queue: str) -> None:
    """The batched task ``collect``: records ``{"items": [...]}`` to
    ``{queue}:batches`` and returns its items (``TB_BATCH_SIZE``,
    ``TB_BATCH_TIMEOUT``)."""
    log = Redis.from_url(redis_url)

    @broker.task(
        task_name="collect",
        batch=True,
        batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
        batch_timeout=float(os.environ.get("TB_BATCH_TIMEOUT", "1")),
    )
    async def collect(items: list[int]) -> list[int]:
        await log.rpush(f"{queue}:batches", json.dumps({"items": items}))
        return items
