"""Plain tasks running when a worker stops are acked, as on stock taskiq.

A real ``taskiq worker`` (``acks_app``) on each taskiq-redis stream broker
(standalone, sentinel, cluster, on private servers) gets SIGTERM while
plain tasks run; they are let finish only once the worker has stopped
reading (its pump has stopped). Every one of them must be acked (nothing
pending in the group) and nothing logged as a traceback.
"""

import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from taskiq.kicker import AsyncKicker

from tests.integration.stream_variants import stream_broker
from tests.integration.workers import Worker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TASKS = 8


def _env(servers: dict[str, str], variant: str, queue: str) -> dict[str, str]:
    url = servers[
        "TEST_REDIS_CLUSTER_URL" if variant == "cluster" else "TEST_REDIS_URL"
    ]
    return {
        "TB_VARIANT": variant,
        "REDIS_URL": url,
        "TB_SENTINELS": servers["TEST_REDIS_SENTINELS"],
        "TB_MASTER": servers["TEST_REDIS_SENTINEL_MASTER_NAME"],
        "TB_QUEUE": queue,
        "TB_LOG_URL": servers["TEST_REDIS_URL"],
    }


def _stream_client(servers: dict[str, str], variant: str) -> Any:
    if variant == "cluster":
        return RedisCluster.from_url(servers["TEST_REDIS_CLUSTER_URL"])
    if variant == "sentinel":
        from redis.asyncio import Sentinel

        host, port = servers["TEST_REDIS_SENTINELS"].split(":")
        sentinel = Sentinel([(host, int(port))])
        return sentinel.master_for(servers["TEST_REDIS_SENTINEL_MASTER_NAME"])
    return Redis.from_url(servers["TEST_REDIS_URL"])


@pytest.mark.parametrize("variant", ["standalone", "sentinel", "cluster"])
async def test_plain_tasks_running_at_a_stop_are_all_acked(
    servers: dict[str, str],
    tmp_path: Path,
    variant: str,
) -> None:
    queue = f"tb-acks-{uuid.uuid4().hex[:8]}"
    env = _env(servers, variant, queue)
    log = Redis.from_url(servers["TEST_REDIS_URL"])
    stream = _stream_client(servers, variant)
    producer = stream_broker(env)
    worker = Worker(
        env, tmp_path / "worker.log", app="tests.integration.acks_app:broker"
    )
    try:
        await producer.startup()  # the group, before any message is sent
        slow: AsyncKicker[Any, Any] = AsyncKicker("slow", producer, {})
        for item in range(TASKS):
            await slow.kiq(item)

        async def all_started() -> bool:
            return bool(await log.llen(f"{queue}:started") == TASKS)

        await eventually(all_started, 30, "every plain task started")
        worker.process.send_signal(signal.SIGTERM)

        async def stopped_reading() -> bool:
            # The Receiver stops taking messages, and the worker's read of
            # the stream has ended: its pump has stopped.
            if not await log.llen(f"{queue}:stopping"):
                return False
            clients = await stream.client_list()
            return not any(
                c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
                for c in clients
            )

        await eventually(stopped_reading, 30, "the worker stopped reading")
        await log.rpush(f"{queue}:go", *range(TASKS))
        try:
            worker.process.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within 30 s:\n{worker.output()}")
        assert worker.process.returncode == 0, worker.output()
        ran = await log.llen(f"{queue}:ran")
        pending = (await stream.xpending(queue, "taskiq"))["pending"]
    finally:
        worker.kill()
        await stream.delete(queue)
        await log.delete(
            *(f"{queue}:{k}" for k in ("started", "ran", "go", "stopping"))
        )
        await stream.aclose()
        await log.aclose()
        await producer.shutdown()
    assert ran == TASKS
    assert pending == 0, f"{pending} executed message(s) left pending"
    assert "Traceback" not in worker.output()
