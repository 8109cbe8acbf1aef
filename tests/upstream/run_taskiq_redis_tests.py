"""Run taskiq-redis's own test suite with taskiq-batching active.

``python -m tests.upstream.run_taskiq_redis_tests [--source GIT] [--ref TAG]
[--without-plugin] [-- PYTEST ARGS]``

taskiq-redis's sdist ships no tests, so they come from a git repository
(``--source``: a local clone, bare or not, or a URL to clone): its
``tests`` and ``pyproject.toml`` at ``--ref``, by default the newest
version tag not after the installed taskiq-redis. The installed
taskiq-redis is the one tested. Private ``redis-server`` processes are
started on free loopback ports (a standalone server, a one-node cluster,
a sentinel watching a master of its own), the suite is pointed at them
through its ``TEST_REDIS_*`` variables, and every one of them is stopped
at the end. Exit code: pytest's.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from tests.upstream import harness

DEFAULT_SOURCE = "https://github.com/taskiq-python/taskiq-redis.git"
SOURCE_ENV = "TASKIQ_REDIS_GIT"
MASTER_NAME = "mymaster"
TARGETS = ("tests",)
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if port not in taken and _port_free(port) and _port_free(port + 10000):
            taken.add(port)
            return port
    raise SystemExit("found no free loopback port for redis-server")


class Servers:
    """redis-server processes started by this runner, and only those."""

    def __init__(self, workdir: Path, executable: str) -> None:
        self.workdir = workdir
        self.executable = executable
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.ports: set[int] = set()

    def start(self, name: str, *args: str, port: int | None = None) -> int:
        """Start one server; return its port once it answers PING."""
        port = free_port(self.ports) if port is None else port
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        logfile = folder / "server.log"
        command = [self.executable, *args]
        if "--sentinel" not in args:
            command += [
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
                "--logfile",
                str(logfile),
            ]
        process = subprocess.Popen(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=harness.die_with_parent,
        )
        self.processes.append((name, process, logfile))
        harness.log(f"started {name}: redis-server pid {process.pid} on port {port}")
        self.wait(name, port, lambda client: bool(client.ping()))
        return port

    def wait(
        self,
        name: str,
        port: int,
        ready: Callable[[redis.Redis], bool],
    ) -> None:
        """Wait until ``ready(client)`` holds for the server on ``port``."""
        process = next(p for n, p, _ in self.processes if n == name)
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            while True:
                if process.poll() is not None:
                    self.fail(name, f"exited with code {process.returncode}")
                try:
                    if ready(client):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.fail(name, f"not ready after {START_TIMEOUT:g} s")
                time.sleep(0.05)
        finally:
            client.close()

    def fail(self, name: str, reason: str) -> None:
        """Stop with the server's log."""
        logfile = next(log for n, _, log in self.processes if n == name)
        text = logfile.read_text(errors="replace") if logfile.is_file() else ""
        raise SystemExit(f"redis-server {name} {reason}\n{text[-2000:]}")

    def stop_all(self) -> None:
        """Stop every server started here (TERM, then KILL), newest first."""
        for name, process, _ in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            harness.log(f"stopped {name} (pid {process.pid})")
        self.processes.clear()


def _cluster_ok(client: redis.Redis) -> bool:
    info: Any = client.cluster("INFO")
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def _master_known(client: redis.Redis) -> bool:
    return bool(client.sentinel_get_master_addr_by_name(MASTER_NAME))


def start_servers(servers: Servers) -> dict[str, str]:
    """Start what the suite needs; return its environment variables."""
    standalone = servers.start("standalone")
    cluster = servers.start(
        "cluster",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-announce-ip",
        "127.0.0.1",
    )
    with redis.Redis(host="127.0.0.1", port=cluster) as client:
        client.cluster("ADDSLOTSRANGE", 0, 16383)
    servers.wait("cluster", cluster, _cluster_ok)
    master = servers.start("sentinel-master")
    sentinel_port = free_port(servers.ports)
    folder = servers.workdir / "sentinel"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\n"
        "bind 127.0.0.1\n"
        f"dir {folder}\n"
        f"logfile {folder / 'server.log'}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n",
    )
    servers.start("sentinel", str(config), "--sentinel", port=sentinel_port)
    servers.wait("sentinel", sentinel_port, _master_known)
    return {
        "TEST_REDIS_URL": f"redis://127.0.0.1:{standalone}",
        "TEST_REDIS_CLUSTER_URL": f"redis://127.0.0.1:{cluster}",
        "TEST_REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}",
        "TEST_REDIS_SENTINEL_MASTER_NAME": MASTER_NAME,
    }


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], check=True, capture_output=True).stdout


def materialize(source: str, ref: str | None, dest: Path, scratch: Path) -> str:
    """Unpack the suite from a git repository; return the ref used."""
    git_dir = source
    if "://" in source or source.startswith("git@"):
        git_dir = str(scratch / "taskiq-redis.git")
        harness.log(f"cloning {source}")
        _git("clone", "--quiet", "--bare", source, git_dir)
    installed = harness.installed_version("taskiq-redis")
    if ref is None:
        tags = _git("-C", git_dir, "tag", "--list").decode().split()
        ref = harness.newest_tag_not_after(tags, installed)
        if ref is None:
            raise SystemExit(f"{source} has no version tag <= {installed}: use --ref")
    harness.log(f"taskiq-redis installed: {installed}; suite from {source} at {ref}")
    archive = _git(
        "-C", git_dir, "archive", "--format=tar", ref, "--", *TARGETS, "pyproject.toml"
    )
    count = harness.unpack_bytes(archive, dest)
    harness.log(f"unpacked {count} files into {dest}")
    return ref


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite against private servers; return pytest's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstream.run_taskiq_redis_tests",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--source",
        default=os.environ.get(SOURCE_ENV, DEFAULT_SOURCE),
        help=f"taskiq-redis git repository: path or URL (${SOURCE_ENV})",
    )
    parser.add_argument("--ref", help="tag or commit (default: nearest version tag)")
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server"),
        help="redis-server executable (default: from PATH)",
    )
    harness.common_arguments(parser)
    args = parser.parse_args(argv)
    if not args.redis_server:
        raise SystemExit("redis-server not found: install it or pass --redis-server")
    harness.exit_on_sigterm()
    workdir = harness.make_workdir("taskiq-redis-upstream-")
    servers = Servers(workdir / "servers", args.redis_server)
    try:
        root = workdir / "taskiq-redis"
        ref = materialize(args.source, args.ref, root, workdir)
        harness.ensure_test_dependencies(root, TARGETS, install=not args.no_install)
        env = start_servers(servers)
        for key, value in env.items():
            harness.log(f"{key}={value}")
        return harness.run_suite(root, TARGETS, args, f"taskiq-redis {ref} tests", env)
    finally:
        servers.stop_all()
        harness.remove_workdir(workdir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
