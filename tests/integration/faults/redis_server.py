"""A private ``redis-server`` on a free loopback port, for tests that stop,
restart or reconfigure Redis without touching the shared one."""

import shutil
import signal
import socket
import subprocess
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.integration.workers import eventually

REDIS_SERVER = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
#: The name of every connection a test opens; a worker's are unnamed.
TEST_CLIENT = "tb-test"
#: What a Redis call raises when its connection was killed or Redis is down.
DOWN = (RedisConnectionError, OSError)


class RedisServer:
    """A private, restartable ``redis-server``.

    :param directory: its working directory (logs, append-only file).
    :param persistent: keep data across restarts (an append-only file,
        fsynced at every write); otherwise a restart starts empty.
    """

    def __init__(self, directory: Path, persistent: bool = False) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.persistent = persistent
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *persistence,
                "--save",
                "",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / f"redis-{self.starts}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 10) -> None:
        """Wait until it answers PING (it has loaded its data)."""

        async def answers() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log()
            client = Redis.from_url(self.url, client_name=TEST_CLIENT)
            try:
                return bool(await client.ping())
            except DOWN:  # refused, or still loading (BusyLoadingError)
                return False
            finally:
                await client.aclose()

        await eventually(answers, timeout, f"redis-server on port {self.port}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM: Redis saves what it persists and exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        logs = sorted(self.directory.glob("redis-*.log"))
        return "".join(path.read_text(errors="replace")[-2000:] for path in logs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
