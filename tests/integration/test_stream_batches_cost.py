"""What waiting for batched messages costs Redis, on a private ``redis-server``.

Stream and list brokers' sources wait alike (``redis_batches_base``).

``INFO commandstats`` counts every command the server ran; nobody else
uses the private server, so its deltas are the source's alone.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.integration.faults.redis_server import REDIS_SERVER, TEST_CLIENT, RedisServer
from tests.integration.stream_batches import (
    Source,
    declare,
    list_source,
    make_broker,
    make_list_broker,
    source,
    spec_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is not installed")
    started = RedisServer(tmp_path / "redis")
    started.start()
    try:
        await started.wait_ready()
        yield started
    finally:
        started.kill()


def _source(url: str, queue: str, kind: str) -> tuple[Any, Source[Any, Any]]:
    """A broker of this kind with the task declared, and its source."""
    if kind == "list":
        broker: Any = make_list_broker(url, queue)
        task = declare(broker, 10, 0.5)
        return task, list_source(broker, spec_of(task))
    broker = make_broker(url, queue)
    task = declare(broker, 10, 0.5)
    return task, source(broker, spec_of(task))


on_both_kinds = pytest.mark.parametrize("kind", ["stream", "list"])


async def src_wakes(src: Source[Any, Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    found: list[tuple[bytes, dict[bytes, bytes]]] = await src.batches.redis.xrange(
        src.names.wake
    )
    return found


async def _calls(client: Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


@on_both_kinds
async def test_an_idle_source_sends_one_command_per_block(
    server: RedisServer, kind: str
) -> None:
    _, src = _source(server.url, "tb-idle", kind)
    observer = Redis.from_url(server.url, client_name=TEST_CLIENT)
    try:
        got = await src.batches.take(src.spec, 1)  # nothing waits
        assert got.batches == []
        assert got.wait_seconds is None
        await src.batches.idle([src.spec], 0.05)  # connects
        before = await _calls(observer)
        started = time.monotonic()
        blocks = 5
        for _ in range(blocks):
            await src.batches.idle([src.spec], 0.2)
        elapsed = time.monotonic() - started
        after = await _calls(observer)
        delta = {k: after[k] - before.get(k, 0) for k in after}
        sent = {k: v for k, v in delta.items() if v}
        assert sent == {"xread": blocks}, sent
        assert elapsed >= blocks * 0.2 * 0.9  # each one blocked
    finally:
        await observer.aclose()


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_a_send_wakes_an_idle_source(server: RedisServer, protocol: int) -> None:
    broker = make_broker(server.url, "tb-wake", protocol=protocol)
    task = declare(broker, 10, 0.5)
    src = source(broker, spec_of(task))
    await _a_send_wakes(task, src)


async def test_a_send_wakes_an_idle_list_source(server: RedisServer) -> None:
    task, src = _source(server.url, "tb-wake-list", "list")
    await _a_send_wakes(task, src)


async def _a_send_wakes(task: Any, src: Source[Any, Any]) -> None:
    await src.batches.take(src.spec, 1)
    waiting = asyncio.ensure_future(src.batches.idle([src.spec], 2.0))
    await asyncio.sleep(0.1)  # likely blocked by now; if not, it reads the wake at once
    await task.kiq(1)
    await asyncio.wait_for(waiting, 5)
    # It returned with the send's wake (a timeout would leave it unseen).
    (wake_id,) = [entry_id for entry_id, _ in await src_wakes(src)]
    assert src.batches.wakes.seen[src.names.wake] == wake_id
    got = await src.batches.take(src.spec, 1)
    assert got.batches == []
    assert got.wait_seconds is not None  # it waits, not due yet
