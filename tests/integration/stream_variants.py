"""The taskiq-redis stream broker that ``TB_*`` variables name.

``acks_app``'s worker and its test's producer build their brokers here:
the test then never imports the worker app, whose log handler and
clients belong in the worker process only.
"""

import os

from taskiq import AsyncBroker
from taskiq_redis import (
    RedisStreamBroker,
    RedisStreamClusterBroker,
    RedisStreamSentinelBroker,
)

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TB_QUEUE", "taskiq-batching-acks")


def stream_broker(env: dict[str, str]) -> AsyncBroker:
    """The broker these variables name (the test's producer uses it too)."""
    variant = env.get("TB_VARIANT", "standalone")
    url = env.get("REDIS_URL", URL)
    queue = env.get("TB_QUEUE", QUEUE)
    if variant == "sentinel":
        host, port = env["TB_SENTINELS"].split(":")
        return RedisStreamSentinelBroker(
            [(host, int(port))], env["TB_MASTER"], queue_name=queue
        )
    if variant == "cluster":
        return RedisStreamClusterBroker(url, queue_name=queue)
    return RedisStreamBroker(url, queue_name=queue)
