"""What an idle fleet asks its broker: commands per second, counted by the server.

The servers are shared (other benchmarks and tests use them meanwhile), so
every count keeps to the fleet's own connections: the local TCP ports of
the worker processes' sockets to the broker's port (``/proc/<pid>/fd`` and
``/proc/net/tcp``), matched with what the server says of each client:

* **Redis**: ``MONITOR`` for the window, counting the commands whose client
  port is the fleet's (a script counts once, its inner calls are the
  server's). ``INFO commandstats`` is server-wide, hence not used here.
* **NATS**: the server's monitoring endpoint (``NATS_MONITOR_URL``, default
  ``http://127.0.0.1:8222``), ``/connz``: each connection's ``in_msgs``
  (the messages a client published: pull requests, acks, publishes) before
  and after the window. No monitoring endpoint: not measured (None).
* **RabbitMQ**: ``rabbitmqctl list_connections peer_port recv_cnt``: the
  packets the server received on each connection (methods and heartbeats)
  before and after the window. No ``rabbitmqctl``: not measured (None).
"""

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from redis.asyncio import Redis

from bench.brokers import amqp_url, nats_url

#: The NATS server's monitoring endpoint when ``NATS_MONITOR_URL`` is unset.
DEFAULT_MONITOR = "http://127.0.0.1:8222"


def parse_tcp(table: str) -> list[tuple[int, int, int]]:
    """``(local port, remote port, inode)`` of each socket in ``/proc/net/tcp``.

    :param table: the file's text (``tcp`` or ``tcp6``), header included.
    :return: one tuple per socket.
    """
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or ":" not in fields[1]:
            continue
        local, remote = fields[1], fields[2]
        local_port = int(local.rsplit(":", 1)[1], 16)
        remote_port = int(remote.rsplit(":", 1)[1], 16)
        found.append((local_port, remote_port, int(fields[9])))
    return found


def fleet_ports(pids: Iterable[int], server_port: int) -> set[int]:
    """The local ports of the processes' TCP connections to ``server_port``.

    :param pids: the fleet's processes.
    :return: local ports (what the server calls the client's port).
    """
    inodes: set[int] = set()
    tables: list[str] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
            if not tables:
                for name in ("tcp", "tcp6"):
                    with open(f"/proc/{pid}/net/{name}", encoding="ascii") as table:
                        tables.append(table.read())
    return {
        local
        for text in tables
        for local, remote, inode in parse_tcp(text)
        if remote == server_port and inode in inodes
    }


async def redis_commands(url: str, ports: set[int], seconds: float) -> dict[str, int]:
    """Commands the clients at ``ports`` sent Redis in the next ``seconds``.

    :return: how many of each (by lower-case name).
    """
    async with Redis.from_url(url) as redis, redis.monitor() as monitor:
        start = time.time()
        end = start + seconds
        count: dict[str, int] = {}
        with contextlib.suppress(TimeoutError):
            while (left := end + 0.5 - time.time()) > 0:
                info: Any = await asyncio.wait_for(monitor.next_command(), left)
                at = float(info["time"])
                if at >= end:
                    break
                port = str(info.get("client_port", ""))
                if at >= start and port.isdigit() and int(port) in ports:
                    name = str(info["command"]).split(" ", 1)[0].strip('"').lower()
                    count[name] = count.get(name, 0) + 1
        return count


def nats_in_msgs(ports: set[int]) -> int | None:
    """Messages the NATS clients at ``ports`` published so far, or None."""
    url = os.environ.get("NATS_MONITOR_URL", DEFAULT_MONITOR) + "/connz?limit=4096"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            connz = json.load(response)
    except OSError:
        return None
    return sum(
        int(conn.get("in_msgs", 0))
        for conn in connz.get("connections", [])
        if int(conn.get("port", 0)) in ports
    )


def amqp_received(ports: set[int]) -> int | None:
    """Packets RabbitMQ received from the clients at ``ports`` so far, or None."""
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "peer_port", "recv_cnt"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in listed.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and int(fields[0]) in ports:
            total += int(fields[1])
    return total


async def idle_commands(
    broker: str, pids: list[int], seconds: float, redis_url: str
) -> tuple[float | None, dict[str, int]]:
    """Commands per second the fleet sent its broker over ``seconds`` at rest.

    :param broker: ``stream``, ``list``, ``nats`` or ``amqp``.
    :param pids: the fleet's processes.
    :return: the whole fleet's commands per second (None if not
        measurable), and on Redis how many of each command in the window.
    """
    url = {"nats": nats_url(), "amqp": amqp_url()}.get(broker, redis_url)
    port = urlparse(url).port or {"nats": 4222, "amqp": 5672}.get(broker, 6379)
    ports = fleet_ports(pids, port)
    if broker in ("stream", "list"):
        names = await redis_commands(redis_url, ports, seconds)
        return sum(names.values()) / seconds, names
    counter = nats_in_msgs if broker == "nats" else amqp_received
    # Each count is taken as its call ends (rabbitmqctl starts for seconds):
    # the window is from the end of one call to the end of the other.
    before = await asyncio.to_thread(counter, ports)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(counter, ports)
    elapsed = time.monotonic() - started
    if before is None or after is None:
        return None, {}
    return (after - before) / elapsed, {}
