"""The app a real ``taskiq worker`` process runs in the NATS tests.

taskiq-nats's ``PullBasedJetStreamBroker`` on the real NATS server
(``NATS_URL``), results and a record of every batch in the real Redis
(``REDIS_URL``). ``TB_QUEUE`` names the stream, its subject
(``<queue>.tasks``), the durable consumer and the Redis keys;
``TB_ACK_WAIT`` is the consumer's ``ack_wait`` in seconds;
``TB_BATCH_SIZE`` and ``TB_BATCH_TIMEOUT`` configure the batched task
``collect``, which appends ``{"items": [...]}`` to ``{queue}:batches``.
"""

import os

from tests.integration.app_brokers import (
    NATS_URL,
    REDIS_URL,
    declare_collect,
    nats_broker,
)

#: The broker both the worker and the test's producer use.
make_broker = nats_broker


QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-nats-it")
broker = make_broker(
    NATS_URL, REDIS_URL, QUEUE, float(os.environ.get("TB_ACK_WAIT", "30"))
)
declare_collect(broker, REDIS_URL, QUEUE)
