"""Worker processes: start in their own session, measure RSS, always kill."""

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _status(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status, in bytes."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command: state is [0]; utime [11], stime [12].
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far, all cores (/proc/stat).

    Busy is every tick but idle and iowait; two readings give the share of
    the machine that was busy between them (``machine_busy``).
    """
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share (0-1) of all cores busy between two ``machine_ticks``."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def _children(pid: int) -> list[int]:
    """Every descendant of a process (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as children:
                    kids = [int(kid) for kid in children.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


#: Every process group started and not yet killed (killed at exit too).
_LIVE: "set[Proc]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.kill()


class Proc:
    """A process group started for one workload; ``kill()`` ends all of it."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log: Path, name: str
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def workers(self) -> list[int]:
        """The processes doing the work: the children, or the process itself."""
        return _children(self.pid) or [self.pid]

    def rss(self) -> int:
        """Current resident set size of the worker processes, summed (bytes)."""
        return sum(_status(pid, "VmRSS") or 0 for pid in self.workers())

    def cpu_seconds(self) -> float:
        """CPU time used so far by the worker processes, summed."""
        return sum(_cpu_seconds(pid) for pid in self.workers())

    def peak_rss(self) -> int:
        """Largest peak RSS (VmHWM) among the worker processes (bytes)."""
        return max((_status(pid, "VmHWM") or 0 for pid in self.workers()), default=0)

    def wait_children(self, count: int, timeout: float) -> None:
        """Wait until the process has forked ``count`` children."""
        deadline = time.monotonic() + timeout
        while len(_children(self.pid)) < count:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {count} worker process(es)")
            time.sleep(0.02)

    def terminate(self, timeout: float) -> bool:
        """SIGTERM the group; True when it exited in time (else it is killed)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        # The group may still hold children that outlive the parent.
        self.kill()
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log_file.close()
        _LIVE.discard(self)

    def output(self, tail: int = 3000) -> str:
        self._log_file.flush()
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


@contextlib.contextmanager
def started(
    argv: list[str], env: dict[str, str], log: Path, name: str
) -> Iterator[Proc]:
    """Run a process group for the ``with`` block; it is killed on exit."""
    proc = Proc(argv, env, log, name)
    try:
        yield proc
    finally:
        proc.kill()


def taskiq_worker_argv(module: str, workers: int = 1) -> list[str]:
    """The ``taskiq worker`` command every taskiq workload uses."""
    return [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        module,
        "--workers",
        str(workers),
        "--log-level",
        "WARNING",
        "--ack-type",
        "when_saved",
    ]


def interruptible(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any] | None:
    """Run a bench's run; None (said on stderr) when Ctrl-C or SIGTERM stopped it.

    Every fleet and queue it started is gone by then: the interrupt
    unwinds every ``finally``.

    :param work: the bench's ``run(...)``.
    :return: its figures, or None when interrupted.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `finally`: the fleet is killed
