"""prometheus_client's internals (the Prometheus exporter, multiprocess mode).

Tested with prometheus_client 0.26.0 here; ``.ci/matrix``'s lowest rows
run the same tests on 0.17 (``pyproject.toml`` bounds:
``prometheus_client>=0.17,<1``). Nothing here imports prometheus_client
before it is called: where values go is decided by that import.
"""

from pathlib import Path


def prometheus_values_in_memory() -> bool:
    """Whether this process's prometheus_client keeps metric values in memory.

    Relies on: ``prometheus_client.values.ValueClass``, picked once when
    the module is first imported: ``MutexValue`` (in memory) unless
    ``PROMETHEUS_MULTIPROC_DIR`` was set then (values in files).

    :return: True when values stay in memory.
    """
    from prometheus_client import values

    return values.ValueClass is values.MutexValue


def prometheus_live_gauge_pids(directory: str) -> set[int]:
    """The processes that left ``live*`` gauge files in a multiprocess directory.

    Relies on: prometheus_client naming the files of ``livesum``,
    ``liveall``, ``livemax``, ``livemin`` and ``livemostrecent`` gauges
    ``gauge_<mode>_<pid>.db``, the files ``mark_process_dead(pid)``
    removes.

    :param directory: the multiprocess directory.
    :return: the pids in those files' names.
    """
    pids: set[int] = set()
    for file in Path(directory).glob("gauge_live*_*.db"):
        pid_text = file.stem.rpartition("_")[2]
        if pid_text.isdigit():
            pids.add(int(pid_text))
    return pids
