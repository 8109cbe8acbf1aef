"""The app a real ``taskiq worker`` process runs in the AMQP transport's tests.

taskiq-aio-pika's ``AioPikaBroker`` as shipped (so the worker reads it
through the AMQP transport; ``rabbit_app.py`` overrides ``listen`` and so
gets the generic one) on the real RabbitMQ (``RABBITMQ_URL``), results and
a record of every batch in the real Redis (``REDIS_URL``). ``TB_QUEUE``
names the exchange, the queue, the dead-letter queue and the Redis keys;
``TB_QOS`` is the prefetch; ``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT``
configure the batched task ``collect``, which appends ``{"items": [...]}``
to ``{queue}:batches``.
"""

import os

from tests.integration.app_brokers import (
    RABBITMQ_URL,
    REDIS_URL,
    amqp_broker,
    declare_collect,
)

#: The broker both the worker and the test's producer use.
make_broker = amqp_broker


QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-amqp-it")
broker = make_broker(
    RABBITMQ_URL, REDIS_URL, QUEUE, int(os.environ.get("TB_QOS", "200"))
)
declare_collect(broker, REDIS_URL, QUEUE)
