"""Metrics of batches: Prometheus and OpenTelemetry exporters.

>>> from taskiq_batching.metrics import PrometheusBatchMetrics
>>> broker = RedisStreamBroker(url).with_middlewares(
>>>     PrometheusMiddleware(server_port=9000),
>>>     BatchingMiddleware(),
>>>     PrometheusBatchMetrics(),
>>> )

Each exporter is imported when first named here, so that using one never
imports the other's library (``prometheus_client`` in particular must not
be imported before taskiq's ``PrometheusMiddleware`` sets the process up).
See docs/observability.md for every metric.
"""

import importlib
from typing import TYPE_CHECKING, Any

from taskiq_batching.metrics.base import INSTRUMENTS, BatchMetricsMiddleware, Instrument

if TYPE_CHECKING:
    from taskiq_batching.metrics.opentelemetry import OpenTelemetryBatchMetrics
    from taskiq_batching.metrics.prometheus import PrometheusBatchMetrics

_LAZY = {
    "OpenTelemetryBatchMetrics": "taskiq_batching.metrics.opentelemetry",
    "PrometheusBatchMetrics": "taskiq_batching.metrics.prometheus",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "INSTRUMENTS",
    "BatchMetricsMiddleware",
    "Instrument",
    "OpenTelemetryBatchMetrics",
    "PrometheusBatchMetrics",
]
