"""The worker app of ``bench/policies.py``: one batched no-op task per policy.

Configured by ``TBP_QUEUE``, ``TBP_POLICY`` and ``REDIS_URL``.
"""

import os
from typing import Any

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TBP_QUEUE", "tbbench-policies")
POLICY = os.environ.get("TBP_POLICY", "none")

#: The task's labels for each policy measured.
POLICIES: dict[str, dict[str, Any]] = {
    "none": {},
    "key": {"batch_key": "k", "batch_max_keys": 100},  # 100 keys
    # N keys: batches of one message, so several run at once.
    "key-distinct": {"batch_key": "k", "batch_max_keys": 1000, "batch_concurrency": 8},
    "cost": {"batch_cost": "c", "batch_max_cost": 1e9},
    "where": {"batch_where": lambda item: item["c"] >= 0},
    "min_size": {"batch_min_size": 10, "batch_max_wait": 2},
    "deadline": {},  # the messages carry batch_deadline labels
}

broker = (
    RedisStreamBroker(URL, queue_name=QUEUE)
    .with_result_backend(
        RedisAsyncResultBackend(URL, prefix_str=QUEUE, result_ex_time=600)
    )
    .with_middlewares(BatchingMiddleware())
)


@broker.task(
    task_name="work",
    batch=True,
    batch_size=100,
    batch_timeout=1,
    **POLICIES[POLICY],
)
async def work(items: list[dict[str, Any]]) -> None:
    """Do nothing: what is measured is the plugin."""
