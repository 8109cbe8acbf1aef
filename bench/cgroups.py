"""A CPU budget for a worker process tree (Linux cgroups, v1 or v2; root).

With every process of a run on the same two cores, two worker processes
cannot show how they scale once one worker, Redis and the benchmark
already fill the machine. A CPU budget of ``CPU_CAP_PER_WORKER`` cores
per worker process (one cgroup for the ``taskiq worker`` process tree:
0.5 core for one worker process, 1.0 shared by two) leaves the rest for
Redis and the benchmark, as on machines with cores to spare: then "two
processes / one" shows whether a second process adds what the first does.
The quota is enforced every ``_PERIOD_US`` (10 ms): with a longer period a
throttled worker stalls for longer, which costs one process more than
two that share a budget.
"""

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Cores each worker process may use in the capped drains.
CPU_CAP_PER_WORKER = 0.5
_PERIOD_US = 10_000
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


def unavailable() -> str | None:
    """Why CPU budgets cannot be set here, or None."""
    if os.geteuid() != 0:
        return "capped drains need root (cgroups)"
    if (_V1 / "cpu.cfs_quota_us").exists() and os.access(_V1, os.W_OK):
        return None
    controllers = _V2 / "cgroup.subtree_control"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return None
    return "no writable cgroup cpu controller"


@contextlib.contextmanager
def cpu_budget(cores: float) -> Iterator[Path]:
    """A new cgroup limited to ``cores`` CPUs; yields its ``cgroup.procs`` file.

    A process that writes its pid there, and every child it forks
    afterwards, share the budget. The cgroup is removed afterwards.
    """
    v1 = (_V1 / "cpu.cfs_quota_us").exists()
    group = (_V1 if v1 else _V2) / f"tbbench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        quota = int(cores * _PERIOD_US)
        if v1:
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
        yield group / "cgroup.procs"
    finally:
        # Its processes are killed by then, but may take a moment to go:
        # rmdir fails while any remain.
        for _ in range(100):
            try:
                group.rmdir()
            except OSError:
                time.sleep(0.02)
            else:
                break


def inside(procs: Path, argv: list[str]) -> list[str]:
    """``argv`` run inside the cgroup: the shell joins it, then execs argv."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]
