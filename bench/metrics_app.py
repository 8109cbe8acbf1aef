"""Metrics on the bench worker's broker (``AppSettings.metrics``), worker side only.

``bench.taskiq_worker`` calls ``instrument`` after building the app; the
benchmark process never does (taskiq's ``PrometheusMiddleware`` sets
``PROMETHEUS_MULTIPROC_DIR`` for the whole process and registers its
metrics once per process). Modes:

* ``""``: none;
* ``taskiq``: taskiq's ``PrometheusMiddleware`` only (per-message counters);
* ``batch``: ``PrometheusBatchMetrics`` only, in multiprocess mode (the
  directory set as taskiq's middleware would);
* ``both``: the documented set-up, taskiq's middleware and the batch metrics.

Every worker process of a run writes to ``<tmp>/tbbench-prom/<queue>``;
the endpoint listens on an ephemeral port of 127.0.0.1 (nothing scrapes
it: what is measured is the cost of recording).
"""

import os
import tempfile
from pathlib import Path

from taskiq import AsyncBroker, TaskiqMiddleware

MODES = ("", "taskiq", "batch", "both")


def instrument(broker: AsyncBroker, mode: str, queue: str) -> None:
    """Add the metrics middlewares of ``mode`` to a worker's broker.

    :param broker: the bench app's broker (it has ``BatchingMiddleware``
        when its task is batched).
    :param mode: one of ``MODES``.
    :param queue: the run's queue, naming its multiprocess directory.
    """
    if mode not in MODES:
        raise ValueError(f"unknown metrics mode {mode!r}")
    if not mode:
        return
    path = Path(tempfile.gettempdir()) / "tbbench-prom" / queue
    path.mkdir(parents=True, exist_ok=True)
    added: list[TaskiqMiddleware] = []
    if mode in ("taskiq", "both"):
        from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

        added.append(
            PrometheusMiddleware(
                metrics_path=path, server_port=0, server_addr="127.0.0.1"
            )
        )
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if mode in ("batch", "both"):
        from taskiq_batching.metrics import PrometheusBatchMetrics

        added.append(PrometheusBatchMetrics())
    broker.add_middlewares(*added)
