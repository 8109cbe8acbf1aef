"""Real ``taskiq worker`` processes for the integration tests."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Calls run at once by ``gather_chunks``.
CHUNK = 200

T = TypeVar("T")


async def gather_chunks(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``calls`` ``CHUNK`` at a time (one round trip's wait for many).

    :return: their results, in their order.
    """
    done: list[T] = []
    for start in range(0, len(calls), CHUNK):
        done.extend(await asyncio.gather(*calls[start : start + CHUNK]))
    return done


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str = ""
) -> None:
    """Wait until ``check`` holds, polling the observed state; fail after timeout.

    ``what`` names the condition in the failure message.
    """
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            detail = f": {what}" if what else ""
            pytest.fail(f"condition not met within {timeout} s{detail}")
        await asyncio.sleep(0.05)


class Worker:
    """One ``taskiq worker`` process tree running ``app`` (a ``module:broker``).

    It gets a session of its own, so that ``kill9`` takes the worker child
    (the process that holds the broker's connections) down with the manager.
    ``args`` are extra ``taskiq worker`` options, e.g. ``("--ack-type", ...)``.
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        app: str = "tests.integration.worker_app:broker",
        args: Sequence[str] = (),
    ) -> None:
        self.log = log
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskiq",
                    "worker",
                    app,
                    "--workers",
                    "1",
                    *args,
                    "--log-level",
                    "WARNING",
                ],
                cwd=ROOT,
                env={**os.environ, **env},
                start_new_session=True,  # its own process group, for kill9()
                stdout=out,
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
        """SIGKILL whatever is left of its process group (also after it exited)."""
        self.kill9()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def package(self) -> str | None:
        """Where its ``taskiq_batching`` was imported from, if its app prints it."""
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("TB_PACKAGE="):
                return line.partition("=")[2]
        return None

    def crashes(self) -> int:
        """How many times its worker child process died and was restarted."""
        return self.log.read_text(errors="replace").count("Process worker-0:")


class Fleet:
    """The worker processes of one test: one app, each with its own log.

    :param app: the ``module:broker`` every worker runs.
    :param env: the variables every worker gets (services, queue).
    :param logs: where each worker's log goes (``worker-<n>.log``).
    """

    def __init__(self, app: str, env: dict[str, str], logs: Path) -> None:
        self.app = app
        self.env = env
        self.logs = logs
        self.workers: list[Worker] = []

    def start(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        **settings: object,
    ) -> Worker:
        """Start one more worker, acking when saved.

        :param args: more ``taskiq worker`` options.
        :param env: variables of this worker only (another server's URL).
        :param settings: ``TB_<NAME>`` variables of the app (batch_size=10 ...).
        :return: the worker.
        """
        env = {
            **self.env,
            **(env or {}),
            **{f"TB_{name.upper()}": str(value) for name, value in settings.items()},
        }
        worker = Worker(
            env,
            self.logs / f"worker-{len(self.workers)}.log",
            app=self.app,
            args=("--ack-type", "when_saved", *args),
        )
        self.workers.append(worker)
        return worker

    def kill_all(self) -> None:
        """kill -9 of every worker still running (a test's teardown)."""
        for worker in self.workers:
            worker.kill9()
