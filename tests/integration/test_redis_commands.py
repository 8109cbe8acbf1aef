"""What the Redis transports ask of the server, counted by the server itself.

Each test starts a private ``redis-server`` (``INFO commandstats`` counts
every client's commands, so the shared one would count other tests').
A batched worker sends no script: one ``XREADGROUP`` per chunk, one
``SET ... EX`` per result, one ``XACK`` per batch; the results are what
``set_result`` stores, expiring as it would have them expire. Without
hiredis the generic transport gives the same results, through
taskiq-redis's own listener and ``set_result`` (one by one).
"""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, batch_task, transports
from taskiq_batching._compat import redis_py
from taskiq_batching.transports.redis_wire import command, round_trip
from tests.helpers import running_worker
from tests.integration.faults.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPIRY = 600


@pytest.fixture
async def server(tmp_path: Path, redis_url: str) -> AsyncIterator[RedisServer]:
    # ``redis_url``: skipped (or failed on CI) like every Redis test when
    # there is no Redis here; this one needs the redis-server program too.
    private = RedisServer(tmp_path / "redis")
    private.start()
    try:
        await private.wait_ready()
        yield private
    finally:
        private.kill()


async def calls(redis: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "generic"])
async def test_a_batched_worker_sends_no_script_and_stores_what_set_result_does(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, hiredis: bool
) -> None:
    monkeypatch.setattr(redis_py, "HIREDIS", hiredis)
    monkeypatch.setattr(transports, "_warned", set())
    queue = f"tb-commands-{uuid.uuid4().hex[:8]}"
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        server.url, prefix_str=queue, result_ex_time=EXPIRY
    )
    broker = (
        RedisStreamBroker(server.url, queue_name=queue, xread_block=200)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware())
    )

    @batch_task(broker, batch_size=100, batch_timeout=5, task_name="total")
    async def total(items: list[int]) -> int:
        return sum(items)

    await broker.startup()
    redis = Redis.from_url(server.url)
    sent = await total.kiq_many(range(300))  # before the worker: full chunks
    before = await calls(redis)
    async with running_worker(broker):
        results = [await task.wait_result(timeout=20) for task in sent]
    after = await calls(redis)
    made = {name: after[name] - before.get(name, 0) for name in after}
    assert sorted(r.return_value for r in results) == sorted(
        [sum(range(100)), sum(range(100, 200)), sum(range(200, 300))] * 100
    )
    if hiredis:
        assert made.get("evalsha", 0) + made.get("eval", 0) == 0
        assert made["xreadgroup"] >= 3
        # Two more: the consumer name's lease, and how far the worker read,
        # published as it stops (redis_holding).
        assert made["set"] == 300 + 2
        assert made["xack"] == 3  # one per batch
    else:  # taskiq-redis's own listener and set_result, one by one (and
        # the lock its listener takes around each sweep for idle entries)
        assert made["set"] >= 300
        assert made["xack"] == 300
    await backend.set_result("reference", results[0])
    reference = await redis.get(f"{queue}:reference")
    for task in sent[:100]:
        key = f"{queue}:{task.task_id}"
        assert 0 < await redis.ttl(key) <= EXPIRY
        assert await redis.get(key) == reference
    await redis.aclose()


async def test_a_round_trip_on_a_killed_connection_is_retried_as_the_client_says(
    server: RedisServer,
) -> None:
    # A client retries what it was told to (none by default, as for any
    # command of redis-py); this one: once, on a new connection.
    client = Redis.from_url(server.url, retry=Retry(NoBackoff(), 1))
    assert await round_trip(client, [command([b"SET", b"k", b"1"])], 1) == [b"OK"]
    killer = Redis.from_url(server.url)
    assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
    replies = await round_trip(
        client, [command([b"INCR", b"k"]), command([b"INCR", b"k"])], 2
    )
    assert replies == [2, 3]
    await killer.aclose()
    await client.aclose()
