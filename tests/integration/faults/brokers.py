"""How the fault suite builds its brokers: the worker's app and the producers.

Only the plugin's public API, so that the same tests run against any version
of the package. The settings are ``app.py``'s environment variables.
"""

import importlib
import inspect
from typing import Any

from taskiq import AsyncBroker
from taskiq.serializers import JSONSerializer, MSGPackSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware


def middleware(max_concurrent: str = "", wait: str = "") -> BatchingMiddleware:
    """``BatchingMiddleware``, with ``max_concurrent_batches`` if given and known.

    :param max_concurrent: ``max_concurrent_batches`` (empty: the default).
    :param wait: not empty: ``wait_in_broker=True`` (issue 18's path:
        batched tasks wait in the broker), when the package knows it.
    """
    known = _parameters(BatchingMiddleware)
    options: dict[str, Any] = {}
    if max_concurrent and "max_concurrent_batches" in known:
        options["max_concurrent_batches"] = int(max_concurrent)
    if wait and "wait_in_broker" in known:
        options["wait_in_broker"] = True
    return BatchingMiddleware(**options)


def _parameters(obj: Any) -> Any:
    return inspect.signature(obj).parameters


def make_broker(settings: dict[str, str]) -> AsyncBroker:
    """Build the broker both the worker and a test's producer use.

    :param settings: the environment variables above.
    """
    kind = settings.get("TB_BROKER", "stream")
    queue = settings["TB_QUEUE"]
    redis_url = settings.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    serializer = (
        MSGPackSerializer()
        if settings.get("TB_SERIALIZER") == "msgpack"
        else JSONSerializer()
    )
    broker: AsyncBroker
    if kind == "stream":
        broker = RedisStreamBroker(
            redis_url,
            queue_name=queue,
            xread_block=int(settings.get("TB_XREAD_BLOCK_MS", "500")),
            idle_timeout=int(settings.get("TB_IDLE_MS", "600000")),
            consumer_name=settings.get("TB_CONSUMER_NAME") or None,
        )
    elif kind == "list":
        broker = ListQueueBroker(redis_url, queue_name=queue)
    elif kind == "amqp":
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

        broker = AioPikaBroker(
            url=settings.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            qos=int(settings.get("TB_QOS", "10")),
            exchange=Exchange(name=queue),
            task_queues=[Queue(name=queue)],
            dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
        )
    elif kind == "nats":
        # Optional: imported by name, so that type checking needs neither.
        nats_api = importlib.import_module("nats.js.api")
        taskiq_nats = importlib.import_module("taskiq_nats")
        broker = taskiq_nats.PullBasedJetStreamBroker(
            servers=[settings.get("NATS_URL", "nats://127.0.0.1:4222")],
            subject=queue,
            stream_name=queue,
            durable=f"{queue}-worker",
            consumer_config=nats_api.ConsumerConfig(
                durable_name=f"{queue}-worker",
                ack_wait=float(settings.get("TB_ACK_WAIT", "30")),
                max_ack_pending=int(settings.get("TB_MAX_ACK_PENDING", "1000")),
            ),
        )
    else:
        raise ValueError(f"TB_BROKER={kind!r}")
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url,
        serializer=serializer,
        prefix_str=queue,
        result_ex_time=600,
    )
    return (
        broker.with_serializer(serializer)
        .with_result_backend(backend)
        .with_middlewares(
            middleware(
                settings.get("TB_MAX_CONCURRENT", ""),
                settings.get("TB_WAIT_IN_BROKER", ""),
            )
        )
    )
