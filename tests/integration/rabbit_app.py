"""The app a real ``taskiq worker`` process runs in the RabbitMQ tests.

taskiq-aio-pika's ``AioPikaBroker`` on the real RabbitMQ, results and
records in the real Redis. Configured by environment variables:
``RABBITMQ_URL``, ``REDIS_URL``, ``TB_QUEUE`` (names the exchange, the
queue, the dead-letter queue and the Redis keys), ``TB_QOS``,
``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT`` (empty: size-only batching).
The ack type is the worker's ``--ack-type``.

Redis keys written by the worker:

* ``{queue}:batches``: one JSON record per batch call
  (``size``, ``reason``, ``items``);
* ``{queue}:acks``: a hash, task_id -> how many times its message was acked
  (counted once the broker's ack has been sent).
"""

import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker, TaskiqDepends
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue
from taskiq_redis import RedisAsyncResultBackend

from taskiq_batching import BatchInfo, BatchingMiddleware


class AckRecordingBroker(AioPikaBroker):
    """``AioPikaBroker`` that counts each message's acks in Redis.

    Only the ack callable is wrapped; deliveries, prefetch (``qos``) and
    everything else are the stock broker's.
    """

    def __init__(self, log: Redis, acks_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log = log
        self._acks_key = acks_key

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """The stock deliveries, with an ack that is also recorded."""
        async for message in super().listen():
            yield AckableMessage(
                data=message.data,
                ack=self._recorded(message.data, message.ack),
            )

    def _recorded(
        self,
        data: bytes,
        ack: Callable[[], Awaitable[None] | None],
    ) -> Callable[[], Awaitable[None]]:
        async def recorded_ack() -> None:
            done = ack()
            if done is not None:
                await done
            task_id = self.formatter.loads(data).task_id
            await self._log.hincrby(self._acks_key, task_id, 1)

        return recorded_ack


def make_broker(rabbitmq_url: str, redis_url: str, queue: str, qos: int) -> AsyncBroker:
    """Build the broker both the worker and the test's producer use."""
    broker = AckRecordingBroker(
        Redis.from_url(redis_url),
        f"{queue}:acks",
        url=rabbitmq_url,
        qos=qos,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
    )
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        redis_url,
        prefix_str=queue,
        result_ex_time=600,
    )
    return broker.with_result_backend(backend).with_middlewares(BatchingMiddleware())


RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-rabbit-it")
broker = make_broker(
    RABBITMQ_URL, REDIS_URL, QUEUE, int(os.environ.get("TB_QOS", "10"))
)
_log = Redis.from_url(REDIS_URL)
_timeout = os.environ.get("TB_BATCH_TIMEOUT", "")


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(os.environ.get("TB_BATCH_SIZE", "100")),
    batch_timeout=float(_timeout) if _timeout else None,
)
async def collect(items: list[int], info: BatchInfo = TaskiqDepends()) -> list[int]:
    """Record the batch in Redis and return its items."""
    record = {"size": info.size, "reason": info.flush_reason.value, "items": items}
    await _log.rpush(f"{QUEUE}:batches", json.dumps(record))
    return items
