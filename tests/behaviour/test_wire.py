"""Messages from an earlier version, which carry the task's settings, on every path.

The worker reads a batched task's settings from its own registered task;
a message's copy of them (a ``batch_key`` function as its repr) is never
read, and never stored with a result.
"""

from typing import Any

import pytest
from taskiq.kicker import AsyncKicker

from taskiq_batching import batch_task
from taskiq_batching.labels import TASK_LABELS
from tests.behaviour.paths import Path, running

pytestmark = pytest.mark.timeout(60)


async def test_a_message_carrying_settings_is_batched_by_the_workers_own(
    path: Path,
) -> None:
    @batch_task(
        path.broker,
        task_name="parity",
        batch_size=2,
        batch_timeout=30,
        batch_key=lambda item: item % 2,
    )
    async def parity(items: list[int]) -> list[int]:
        return items

    # What an earlier version sent: every label of the task.
    old: AsyncKicker[Any, Any] = AsyncKicker(
        task_name=parity.task_name, broker=path.broker, labels=dict(parity.labels)
    )
    async with running(path):
        sent = [await old.kiq(item) for item in (1, 2, 3, 4)]
        results = [await task.wait_result(timeout=20) for task in sent]
    # Same key, two per batch: the worker's batch_key and batch_size.
    assert [result.return_value for result in results] == [[1, 3], [2, 4]] * 2
    for result in results:
        assert TASK_LABELS.intersection(result.labels) == set()
