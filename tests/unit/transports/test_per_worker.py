"""Which batched tasks cannot wait in the broker (``per_worker_reason``)."""

from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import per_worker_reason


def spec_with(**settings: Any) -> BatchSpec:
    broker = InMemoryBroker().with_middlewares(BatchingMiddleware())

    @batch_task(broker, task_name="t", batch_size=10, **settings)
    async def t(items: list[int]) -> None: ...

    spec = getattr(t.task, "batch_spec", None)
    assert isinstance(spec, BatchSpec)
    return spec


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"batch_timeout": 1}, None),
        (
            {"batch_key": lambda n: n % 2, "batch_cost": float, "batch_max_cost": 5},
            None,
        ),
        ({"batch_key": lambda n: n % 2, "batch_max_keys": 4}, "batch_max_keys"),
        (
            {"batch_timeout": 0.1, "batch_min_size": 3, "batch_max_wait": 1},
            "batch_min_size",
        ),
    ],
)
def test_settings_about_one_workers_buffers_keep_a_task_there(
    settings: dict[str, Any], reason: str | None
) -> None:
    assert per_worker_reason(spec_with(**settings)) == reason
