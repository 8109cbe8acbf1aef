"""Real ``taskiq worker`` processes for the integration tests."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Wait until ``check`` holds, polling the observed state; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


class Worker:
    """One ``taskiq worker`` process running tests/integration/worker_app.py."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskiq",
                "worker",
                "tests.integration.worker_app:broker",
                "--workers",
                "1",
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group, for kill9()
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float, signum: int = signal.SIGTERM) -> float:
        """Signal the worker to stop; return the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"worker still alive {timeout} s after signal {signum}:\n"
                f"{self.output()}"
            )
        return time.monotonic() - started

    def kill9(self) -> None:
        """SIGKILL the worker and its child processes: a crash, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.kill9()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]
