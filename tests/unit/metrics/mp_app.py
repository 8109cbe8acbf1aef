"""A process of ``test_multiprocess.py``.

``python -m tests.unit.metrics.mp_app MODE DIR``; modes:

* ``lazy``: set a broker up with the exporter, start it as a client; print
  whether ``prometheus_client`` was imported;
* ``batch``: taskiq's ``PrometheusMiddleware`` (multiprocess directory DIR)
  first, then the exporter; start the exporter as in a worker process and
  run one batch of 3;
* ``early``: as ``batch``, but ``prometheus_client`` is imported before
  taskiq's middleware sets the directory.

Prints one JSON line: ``{"pid": ..., "imported": ...}``.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

from taskiq import InMemoryBroker

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.metrics import PrometheusBatchMetrics


async def run(mode: str, path: Path) -> None:
    if mode == "early":
        import prometheus_client  # noqa: F401
    if mode in ("batch", "early"):
        from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

        PrometheusMiddleware(metrics_path=path)
    metrics = PrometheusBatchMetrics()
    broker = InMemoryBroker().with_middlewares(BatchingMiddleware(), metrics)

    @batch_task(broker, task_name="mp", batch_size=3)
    async def mp(items: list[int]) -> None:
        pass

    await broker.startup()
    if mode != "lazy":
        # As in a worker process; only this middleware's startup (the
        # broker's would serve HTTP and install signal handlers).
        broker.is_worker_process = True
        await metrics.startup()
        for item in range(3):
            await mp.kiq(item)
        await broker.wait_all()
        await metrics.shutdown()
        broker.is_worker_process = False
    await broker.shutdown()
    imported = "prometheus_client" in sys.modules
    print(json.dumps({"pid": os.getpid(), "imported": imported}))


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], Path(sys.argv[2])))
