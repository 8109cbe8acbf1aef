"""The taskiq app of every taskiq workload: one task named ``work``.

``build(settings)`` returns the broker and task; the worker process imports
``bench.taskiq_worker:broker``, which builds them from ``TBB_*`` environment
variables (``AppSettings.to_env``), and the benchmark process builds the
same app to produce messages.

The task is plain (``async def work(item: int)``) or batched
(``async def work(items: list[int])``) and writes to one of four sinks:

* ``noop``: nothing;
* ``mset``: Redis, ``SET`` per item (plain) or one ``MSET`` per batch;
* ``pg``: PostgreSQL, one ``INSERT`` per item (plain) or one ``COPY`` of the
  batch (``copy_records_to_table``), through a pool of ``PG_POOL`` connections;
* ``sleep``: a synthetic sink on ONE connection that costs 2 ms per call
  (``asyncio.sleep(0.002)`` under a lock), per item or per batch.

In the worker, a reporter task pushes what the benchmark reads back to
Redis every 100 ms with one command: the size of each batch
(``<queue>:sizes``) and, with ``latency=True``, a middleware's
``post_save`` time of each message (``<queue>:saved``).
"""

import asyncio
import contextlib
import importlib
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, TaskiqEvents, TaskiqMessage, TaskiqMiddleware
from taskiq.result import TaskiqResult
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware

#: Connections of the PostgreSQL sink's pool.
PG_POOL = 4
#: Cost of one call of the synthetic sink, in seconds.
SLEEP_SINK_COST = 0.002
#: Seconds between two pushes of the reporter.
REPORT_INTERVAL = 0.1
TASK_NAME = "work"


@dataclass(frozen=True)
class AppSettings:
    """What a taskiq workload runs; travels to the worker as ``TBB_*`` vars."""

    redis_url: str
    queue: str
    broker: str = "stream"  # stream | list | amqp | nats
    batched: bool = False
    sink: str = "noop"  # noop | mset | pg | sleep
    results: bool = True
    batch_size: int = 100
    batch_timeout: float = 1.0
    #: Add BatchingMiddleware even to a plain task's broker.
    middleware: bool = False
    #: Record each message's post_save time (latency workloads).
    latency: bool = False
    #: Prometheus metrics in the worker (``bench.metrics_app.MODES``).
    metrics: str = ""
    pg_dsn: str = ""
    pg_table: str = ""

    def to_env(self) -> dict[str, str]:
        """The environment variables that describe these settings."""
        return {
            f"TBB_{key.upper()}": str(int(value) if isinstance(value, bool) else value)
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_env(cls) -> "AppSettings":
        """Read settings written by ``to_env``."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = os.environ.get(f"TBB_{field.name.upper()}")
            if raw is None:
                continue
            if field.type is bool:
                values[field.name] = raw == "1"
            elif field.type is int:
                values[field.name] = int(raw)
            elif field.type is float:
                values[field.name] = float(raw)
            else:
                values[field.name] = raw
        return cls(**values)


class SavedAt(TaskiqMiddleware):
    """Records when each message's result was stored (``post_save``)."""

    def __init__(self, reporter: "Reporter") -> None:
        super().__init__()
        self.reporter = reporter

    def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Note the time; the reporter pushes it."""
        self.reporter.saved.append(f"{message.task_id} {time.time():.6f}")


class Reporter:
    """Pushes batch sizes and save times to Redis, one command per interval."""

    def __init__(self, redis_url: str, queue: str) -> None:
        self.redis_url = redis_url
        self.queue = queue
        self.sizes: list[int] = []
        self.saved: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._redis: Redis | None = None

    def start(self) -> None:
        self._redis = Redis.from_url(self.redis_url)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        if self._redis is not None:
            await self._redis.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        if self._redis is None or not (self.sizes or self.saved):
            return
        sizes, self.sizes = self.sizes, []
        saved, self.saved = self.saved, []
        pipe = self._redis.pipeline(transaction=False)
        if sizes:
            pipe.rpush(f"{self.queue}:sizes", *sizes)
        if saved:
            pipe.rpush(f"{self.queue}:saved", *saved)
        await pipe.execute()


class Sinks:
    """The connections a sink writes through (opened in the worker only)."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.redis: Redis | None = None
        self.pg: Any = None
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        if self.settings.sink == "mset":
            self.redis = Redis.from_url(self.settings.redis_url)
        elif self.settings.sink == "pg":
            # Imported by name: only the PG workloads need it installed.
            asyncpg = importlib.import_module("asyncpg")
            self.pg = await asyncpg.create_pool(
                self.settings.pg_dsn, min_size=PG_POOL, max_size=PG_POOL
            )

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        if self.pg is not None:
            await self.pg.close()

    def key(self, item: int) -> str:
        return f"{self.settings.queue}:v:{item}"

    async def one(self, item: int) -> None:
        """Write one item (a plain task's call)."""
        sink = self.settings.sink
        if sink == "mset":
            assert self.redis is not None
            await self.redis.set(self.key(item), item)
        elif sink == "pg":
            await self.pg.execute(
                f"INSERT INTO {self.settings.pg_table} (item) VALUES ($1)", item
            )
        elif sink == "sleep":
            async with self.lock:
                await asyncio.sleep(SLEEP_SINK_COST)

    async def many(self, items: list[int]) -> None:
        """Write a batch with one bulk operation (a batched task's call)."""
        sink = self.settings.sink
        if sink == "mset":
            assert self.redis is not None
            await self.redis.mset({self.key(item): item for item in items})
        elif sink == "pg":
            async with self.pg.acquire() as connection:
                await connection.copy_records_to_table(
                    self.settings.pg_table,
                    records=[(item,) for item in items],
                    columns=["item"],
                )
        elif sink == "sleep":
            async with self.lock:
                await asyncio.sleep(SLEEP_SINK_COST)


@dataclass
class App:
    """A built app: the broker, its ``work`` task and what the worker opens."""

    settings: AppSettings
    broker: AsyncBroker
    task: Any
    sinks: Sinks
    reporter: Reporter


def build(settings: AppSettings) -> App:
    """Build the broker and its ``work`` task (producer and worker alike)."""
    s = settings
    broker: AsyncBroker
    if s.broker == "stream":
        broker = RedisStreamBroker(s.redis_url, queue_name=s.queue)
    elif s.broker == "list":
        broker = ListQueueBroker(s.redis_url, queue_name=s.queue)
    elif s.broker in ("amqp", "nats"):  # RabbitMQ, NATS JetStream
        from bench.brokers import make_broker

        broker = make_broker(s.broker, s.queue)
    else:
        raise ValueError(f"unknown broker {s.broker!r}")
    if s.results:
        backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
            s.redis_url, prefix_str=s.queue, result_ex_time=900
        )
        broker = broker.with_result_backend(backend)
    reporter = Reporter(s.redis_url, s.queue)
    middlewares: list[TaskiqMiddleware] = []
    if s.batched or s.middleware:
        middlewares.append(BatchingMiddleware())
    if s.latency:
        middlewares.append(SavedAt(reporter))
    if middlewares:
        broker = broker.with_middlewares(*middlewares)
    sinks = Sinks(s)
    task = _register(broker, s, sinks, reporter)

    async def startup(_: Any) -> None:
        await sinks.open()
        reporter.start()

    async def shutdown(_: Any) -> None:
        await reporter.stop()
        await sinks.close()

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, startup)
    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, shutdown)
    return App(s, broker, task, sinks, reporter)


def _register(
    broker: AsyncBroker, s: AppSettings, sinks: Sinks, reporter: Reporter
) -> Any:
    if s.batched:

        async def work_batch(items: list[int]) -> None:
            reporter.sizes.append(len(items))
            if s.sink != "noop":
                await sinks.many(items)

        return broker.task(
            task_name=TASK_NAME,
            batch=True,
            batch_size=s.batch_size,
            batch_timeout=s.batch_timeout,
        )(work_batch)

    async def work(item: int) -> None:
        if s.sink != "noop":
            await sinks.one(item)

    return broker.task(task_name=TASK_NAME)(work)


__all__ = ["App", "AppSettings", "build"]
