"""The brokers of the head-of-line tests for ``hol_app`` and the producer."""

import os
from typing import Any

from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from tests.integration.app_brokers import amqp_broker, batching, nats_broker

KINDS = ["stream", "list", "rabbit", "nats"]
#: Messages a worker reads at once at most (stream ``xread_count``, AMQP
#: ``qos``, NATS ``max_ack_pending``): a backlog several times this is past
#: what one read parks.
READ_SIZE = 10


def make_broker(kind: str, redis_url: str, queue: str) -> AsyncBroker:
    """The broker of ``kind`` on ``queue``, results in Redis, batching.

    :param kind: ``stream``, ``list``, ``rabbit`` or ``nats``.
    """
    if kind == "rabbit":
        url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
        return amqp_broker(url, redis_url, queue, qos=READ_SIZE)
    if kind == "nats":
        url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
        return nats_broker(
            url, redis_url, queue, ack_wait=30, max_ack_pending=READ_SIZE
        )
    broker: Any
    if kind == "list":
        broker = ListQueueBroker(redis_url, queue_name=queue)
    else:
        broker = RedisStreamBroker(
            redis_url, queue_name=queue, xread_block=500, xread_count=READ_SIZE
        )
    return batching(broker, redis_url, queue)
