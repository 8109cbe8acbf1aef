"""The app every fault test's ``taskiq worker`` runs, configured by environment.

It uses the plugin's public API only (``BatchingMiddleware``, ``BatchInfo``,
``@broker.task(batch=True, ...)``), so the same tests run against any
version of the package (it prints which one it imported). Every batch
function records what it did in Redis (``REDIS_URL``, keys
``{TB_QUEUE}:...``), where the tests observe it.

Settings (environment variables):

* ``TB_BROKER``: ``stream`` (``RedisStreamBroker``), ``list``
  (``ListQueueBroker``), ``amqp`` (``AioPikaBroker``) or ``nats``
  (``PullBasedJetStreamBroker``);
* ``REDIS_URL``, ``RABBITMQ_URL``, ``NATS_URL``, ``TB_QUEUE`` (the queue,
  stream or subject, and the start of every Redis key);
* ``TB_IDLE_MS``: the stream broker's ``idle_timeout``; ``TB_XREAD_BLOCK_MS``;
  ``TB_CONSUMER_NAME``: its ``consumer_name`` (unset: random per process);
* ``TB_QOS``: the AMQP prefetch; ``TB_ACK_WAIT``, ``TB_MAX_ACK_PENDING``: NATS;
* ``TB_BATCH_SIZE``, ``TB_BATCH_TIMEOUT`` (empty: size-only),
  ``TB_BATCH_DELAY`` (seconds each batch takes): the task ``collect``;
* ``TB_SIZE_ONLY``: comma-separated batch sizes, one size-only batched task
  each (``size_only_0``, ``size_only_1``...);
* ``TB_SLOW_DELAY``: seconds each batch of ``slow`` takes;
* ``TB_PLAIN_DELAY``: seconds each run of the plain task ``slow_plain`` takes;
* ``TB_MAX_CONCURRENT``: ``BatchingMiddleware(max_concurrent_batches=...)``
  and ``TB_TASK_CONCURRENCY``: ``batch_concurrency`` of ``bounded_*``, both
  passed only when the installed package knows them;
* ``TB_FAIL_ONCE``: a middleware fails ``post_execute`` once per message of
  ``collect``;
* ``TB_WAIT_IN_BROKER``: not empty: batched tasks wait in the broker
  (``BatchingMiddleware(wait_in_broker=True)``, docs/fleet.md); a test's
  setting (``start_worker`` does not pass on the pytest process's).

Redis keys written:

* ``{queue}:batches``: one JSON record per batch call (``task``, ``size``,
  ``reason``, ``pid``, ``pgid``: the ``taskiq worker`` process group, ``items``,
  ``at``: when it was recorded, ``began``: when ``collect``'s call began);
* ``{queue}:items`` (a set) and ``{queue}:processed`` (a counter): items
  ``collect`` processed, to tell "processed once" from "processed twice";
* ``{queue}:started``: hash, task name -> items whose batch started;
* ``{queue}:plain_runs``: runs of ``slow_plain``;
* ``{queue}:concurrency``: hash of the most batch calls seen running at once
  (``all``, and per task).
"""

import asyncio
import json
import os
import sys
import time
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import TaskiqDepends, TaskiqMessage, TaskiqMiddleware

import taskiq_batching
from taskiq_batching import BatchInfo
from tests.integration.faults.brokers import make_broker

# Which package the worker runs (the tests compare old and new versions).
print(f"TB_PACKAGE={taskiq_batching.__file__}", file=sys.stderr, flush=True)

SETTINGS = dict(os.environ)
QUEUE = SETTINGS.get("TB_QUEUE", "tb-fault")
broker = make_broker({**SETTINGS, "TB_QUEUE": QUEUE})


class FailOnce(TaskiqMiddleware):
    """Raises in ``post_execute`` the first time it sees a message of
    ``collect`` (``TB_FAIL_ONCE=1``): the message is left unfinished, as
    taskiq leaves a message whose middleware fails (no result, no ack)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    async def post_execute(self, message: TaskiqMessage, result: Any) -> None:
        if message.task_name == "collect" and message.task_id not in self.seen:
            self.seen.add(message.task_id)
            await _log.hincrby(f"{QUEUE}:started", "failed_post_execute", 1)
            raise RuntimeError(f"post_execute fails once for {message.task_id}")


if SETTINGS.get("TB_FAIL_ONCE"):
    broker.add_middlewares(FailOnce())

# The batches' own records: retried for ~2 s, so that a restarted Redis
# does not fail the batch that records in it.
_log = Redis.from_url(
    SETTINGS.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    retry=Retry(ConstantBackoff(0.1), 20),
    retry_on_error=[RedisConnectionError, OSError],
)
_timeout = SETTINGS.get("TB_BATCH_TIMEOUT", "5")
BATCH_DELAY = float(SETTINGS.get("TB_BATCH_DELAY", "0"))
SLOW_DELAY = float(SETTINGS.get("TB_SLOW_DELAY", "5"))
PLAIN_DELAY = float(SETTINGS.get("TB_PLAIN_DELAY", "3"))


async def record(
    task: str, info: BatchInfo, items: list[Any], began: float | None = None
) -> None:
    """One JSON record of a batch call (``began``: when the call began)."""
    entry = {
        "task": task,
        "size": info.size,
        "reason": info.flush_reason.value,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "items": items,
        "at": time.time(),
        "began": began,
    }
    await _log.rpush(f"{QUEUE}:batches", json.dumps(entry))


@broker.task(
    task_name="collect",
    batch=True,
    batch_size=int(SETTINGS.get("TB_BATCH_SIZE", "100")),
    batch_timeout=float(_timeout) if _timeout else None,
)
async def collect(items: list[int], info: BatchInfo = TaskiqDepends()) -> list[int]:
    """Take ``TB_BATCH_DELAY`` seconds, record the batch, return its items."""
    began = time.time()
    await _log.hincrby(f"{QUEUE}:started", "collect", len(items))
    if BATCH_DELAY:
        await asyncio.sleep(BATCH_DELAY)
    async with _log.pipeline(transaction=True) as pipe:
        pipe.sadd(f"{QUEUE}:items", *items)
        pipe.incrby(f"{QUEUE}:processed", len(items))
        await pipe.execute()
    await record("collect", info, items, began)
    return items


def _size_only(index: int, size: int) -> None:
    name = f"size_only_{index}"

    async def size_only(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
        await record(name, info, items)
        return len(items)

    broker.task(task_name=name, batch=True, batch_size=size)(size_only)


for _index, _size in enumerate(
    filter(None, SETTINGS.get("TB_SIZE_ONLY", "").split(","))
):
    _size_only(_index, int(_size))


@broker.task(task_name="slow", batch=True, batch_size=2, batch_timeout=0.2)
async def slow(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
    """A batched task whose batches take ``TB_SLOW_DELAY`` seconds."""
    await _log.hincrby(f"{QUEUE}:started", "slow", len(items))
    await asyncio.sleep(SLOW_DELAY)
    await record("slow", info, items)
    return len(items)


@broker.task(task_name="hang", batch=True, batch_size=10, batch_timeout=0.2)
async def hang(items: list[int], info: BatchInfo = TaskiqDepends()) -> int:
    """A batched task whose batches never return."""
    await _log.hincrby(f"{QUEUE}:started", "hang", len(items))
    await asyncio.Event().wait()
    return len(items)


@broker.task(task_name="slow_plain")
async def slow_plain(value: int) -> int:
    """A plain task that takes ``TB_PLAIN_DELAY`` seconds; its runs are counted."""
    await _log.incr(f"{QUEUE}:plain_runs")
    await asyncio.sleep(PLAIN_DELAY)
    return value


@broker.task(task_name="plain_hang")
async def plain_hang(value: int) -> int:
    """A plain task that never returns."""
    await _log.hincrby(f"{QUEUE}:started", "plain_hang", 1)
    await asyncio.Event().wait()
    return value


@broker.task(task_name="echo")
async def echo(value: int) -> int:
    """A plain task that returns at once."""
    return value


@broker.task(task_name="with_secret", batch=True, batch_size=100, batch_timeout=0.3)
async def with_secret(
    items: list[int], api_key: SecretStr, info: BatchInfo = TaskiqDepends()
) -> dict[str, Any]:
    """A batch per API key: returns the key it was called with, and its items."""
    await record("with_secret", info, items)
    return {"key": api_key.get_secret_value(), "items": items}


class Tenant(BaseModel):
    """An extra argument whose token is hidden from its repr."""

    name: str
    token: str = Field(repr=False)


@broker.task(task_name="with_tenant", batch=True, batch_size=100, batch_timeout=0.3)
async def with_tenant(
    items: list[int], tenant: Tenant, info: BatchInfo = TaskiqDepends()
) -> dict[str, Any]:
    """A batch per tenant: returns the token it was called with, and its items."""
    await record("with_tenant", info, items)
    return {"token": tenant.token, "items": items}


class Opaque:
    """No serializer knows this type."""


@broker.task(task_name="returns_object", batch=True, batch_size=10, batch_timeout=0.3)
async def returns_object(items: list[int], info: BatchInfo = TaskiqDepends()) -> Any:
    """Returns a value the JSON serializer cannot encode."""
    await record("returns_object", info, items)
    return Opaque()


@broker.task(task_name="returns_set", batch=True, batch_size=10, batch_timeout=0.3)
async def returns_set(items: list[int], info: BatchInfo = TaskiqDepends()) -> Any:
    """Returns a set of objects, which no result serializer can encode."""
    await record("returns_set", info, items)
    return {Opaque()}


_concurrency: dict[str, int] = {"all": 0}
_max_concurrency: dict[str, int] = {"all": 0}
_bounded_labels: dict[str, Any] = {}
# Versions that know batch_concurrency define DEFAULT_BATCH_CONCURRENCY:
# earlier ones in the package's root, later ones only in its settings module.
_knows_concurrency = any(
    hasattr(module, "DEFAULT_BATCH_CONCURRENCY")
    for module in (taskiq_batching, getattr(taskiq_batching, "settings", None))
)
if SETTINGS.get("TB_TASK_CONCURRENCY") and _knows_concurrency:
    _bounded_labels["batch_concurrency"] = int(SETTINGS["TB_TASK_CONCURRENCY"])


def _bounded(name: str) -> None:
    async def bounded(
        items: list[int], key: int, info: BatchInfo = TaskiqDepends()
    ) -> int:
        for counter in ("all", name):
            _concurrency[counter] = _concurrency.get(counter, 0) + 1
            _max_concurrency[counter] = max(
                _max_concurrency.get(counter, 0), _concurrency[counter]
            )
        try:
            mapping: dict[Any, Any] = dict(_max_concurrency)
            await _log.hset(f"{QUEUE}:concurrency", mapping=mapping)
            await asyncio.sleep(BATCH_DELAY)
            if any(item % 1000 != key for item in items):
                raise AssertionError(f"batch of key {key} holds {items}")
            await _log.incrby(f"{QUEUE}:processed", len(items))
        finally:
            for counter in ("all", name):
                _concurrency[counter] -= 1
        return key

    broker.task(
        task_name=name, batch=True, batch_size=10, batch_timeout=0.1, **_bounded_labels
    )(bounded)


_bounded("bounded_a")
_bounded("bounded_b")


@broker.task(task_name="raises", batch=True, batch_size=5, batch_timeout=0.2)
async def raises(items: list[int], kind: str, info: BatchInfo = TaskiqDepends()) -> int:
    """Raises ``KeyboardInterrupt`` or ``SystemExit`` (``kind``), else returns."""
    await record("raises", info, items)
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "exit":
        raise SystemExit(3)
    return len(items)


@broker.task(task_name="raises_sync", batch=True, batch_size=5, batch_timeout=0.2)
def raises_sync(items: list[int], kind: str) -> int:
    """``raises``, as a sync function (run in the worker's thread pool)."""
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "exit":
        raise SystemExit(3)
    return len(items)
