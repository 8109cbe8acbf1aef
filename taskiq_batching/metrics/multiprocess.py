"""prometheus_client multiprocess mode, as taskiq's ``PrometheusMiddleware`` sets it up.

Every process of ``taskiq worker --workers N`` writes its values to files
in ``PROMETHEUS_MULTIPROC_DIR``, and the endpoint adds them up. Nothing
here is imported unless the Prometheus exporter creates its metrics.
"""

import contextlib
import logging
import os

from taskiq_batching._compat import (
    prometheus_live_gauge_pids,
    prometheus_values_in_memory,
)

logger = logging.getLogger("taskiq_batching")


def directory() -> str | None:
    """The multiprocess directory of this process, if it has one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def warn_if_in_memory() -> None:
    """Say so when the directory is set but this process's values stay in memory.

    prometheus_client picks where values go once, when it is first
    imported: imported before the directory was set, it keeps them in
    memory, where the multiprocess endpoint never looks.
    """
    path = directory()
    if path is None:
        return
    if prometheus_values_in_memory():
        logger.warning(
            "taskiq_batching: prometheus_client was imported before "
            "PROMETHEUS_MULTIPROC_DIR was set (%s): this process's batch "
            "metrics stay in memory, and the multiprocess endpoint does not "
            "show them. Create taskiq's PrometheusMiddleware before anything "
            "imports prometheus_client.",
            path,
        )


def forget_dead_processes() -> None:
    """Drop the live gauges of worker processes that died without cleaning up.

    ``livesum`` gauges are summed over every process file in the directory;
    taskiq restarts a dead worker under a new pid but never removes the
    old files (prometheus_client's ``mark_process_dead``), so a crashed
    process's last count would be added forever.
    """
    path = directory()
    if path is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    for pid in prometheus_live_gauge_pids(path):
        if _alive(pid):
            continue
        # Another worker starting at the same time may remove it first.
        with contextlib.suppress(OSError):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True
