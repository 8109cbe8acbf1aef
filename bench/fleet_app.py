"""The worker app of ``bench/fleet.py``: one batched task, ``fleet``.

``taskiq worker bench.fleet_app:broker --workers N`` builds it from
``TBF_*`` environment variables (``FleetSettings.to_env``); the benchmark
process calls ``build`` with the same settings to send. The broker is built
on first access of ``broker`` (a module ``__getattr__``), so importing this
module to send builds nothing from the environment.

Each message's item is its send time (``time.time()`` on the producer),
or with ``keys`` > 0 ``[send time, key]`` (the task's ``batch_key`` is the
key, ``batch_max_keys`` is ``max_keys`` when set). The batch function
returns, per item, ``[send time, batch size, batch start, pid, key]`` (key
-1 without keys): the batch start is ``time.time()`` when the function is
called, so the benchmark gets every message's batch size and its wait
from the send without asking the worker anything.

A plain task, ``fleet_plain`` (``PLAIN_NAME``), returns ``[send time,
start]``: the latency of plain tasks sharing the broker with waiting
batches (``bench/fleet_rest.py``).

At ``WORKER_STARTUP`` each process increments ``<queue>:ready`` so that
the benchmark starts sending only when the whole fleet is up.
"""

import asyncio
import functools
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware, PerItem, batch_task, per_item

TASK_NAME = "fleet"
#: The plain (unbatched) task sharing the broker with the batched one.
PLAIN_NAME = "fleet_plain"
#: Brokers measured, by the name the command line uses.
BROKERS = ("stream", "list", "amqp", "nats")


@dataclass(frozen=True)
class FleetSettings:
    """One fleet run's app; travels to the workers as ``TBF_*`` variables."""

    redis_url: str
    queue: str
    broker: str = "stream"
    batch_size: int = 100
    batch_timeout: float = 0.5
    #: ``BatchingMiddleware(wait_in_broker=...)``: False is today's
    #: per-worker buffering, True lets batches wait in the broker.
    wait_in_broker: bool = False
    #: Keys the items spread over (``batch_key``); 0: no ``batch_key``.
    keys: int = 0
    #: ``batch_max_keys`` (0: not set).
    max_keys: int = 0
    #: ``batch_concurrency`` (0: not set, the default 1).
    concurrency: int = 0
    #: Seconds each batch awaits (its I/O, a bulk insert's round trip).
    batch_delay: float = 0.0

    def to_env(self) -> dict[str, str]:
        """The environment variables that describe these settings."""
        return {f"TBF_{key.upper()}": str(val) for key, val in asdict(self).items()}

    @classmethod
    def from_env(cls) -> "FleetSettings":
        """Read settings written by ``to_env``."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = os.environ.get(f"TBF_{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse(field.type, raw)
        return cls(**values)

    def ready_key(self) -> str:
        """The counter of worker processes started."""
        return f"{self.queue}:ready"


def _parse(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        return raw == "True"
    if kind in (int, float, "int", "float"):
        return {"int": int, "float": float}.get(kind, kind)(raw)
    return raw


@dataclass
class FleetApp:
    """A built app: its broker and the batched task."""

    settings: FleetSettings
    broker: AsyncBroker
    task: Any


def _transport(s: FleetSettings) -> AsyncBroker:
    if s.broker == "stream":
        return RedisStreamBroker(s.redis_url, queue_name=s.queue)
    if s.broker == "list":
        return ListQueueBroker(s.redis_url, queue_name=s.queue)
    if s.broker in ("amqp", "nats"):
        from bench.brokers import make_broker

        return make_broker(s.broker, s.queue)
    raise ValueError(f"unknown broker {s.broker!r}")


def build(s: FleetSettings) -> FleetApp:
    """Build the broker and its batched task (producer and workers alike)."""
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        s.redis_url, prefix_str=s.queue, result_ex_time=900
    )
    broker = (
        _transport(s)
        .with_result_backend(backend)
        .with_middlewares(BatchingMiddleware(wait_in_broker=s.wait_in_broker))
    )

    async def fleet(items: list[Any]) -> PerItem[list[float]]:
        start = time.time()
        size, pid = float(len(items)), float(os.getpid())
        if s.batch_delay:
            await asyncio.sleep(s.batch_delay)
        return per_item(
            [sent, size, start, pid, key] for sent, key in map(_sent_key, items)
        )

    keyed: dict[str, Any] = {}
    if s.keys:
        keyed["batch_key"] = _key
    if s.max_keys:
        keyed["batch_max_keys"] = s.max_keys
    if s.concurrency:
        keyed["batch_concurrency"] = s.concurrency
    task = batch_task(
        broker,
        task_name=TASK_NAME,
        batch_size=s.batch_size,
        batch_timeout=s.batch_timeout,
        **keyed,
    )(fleet)

    @broker.task(task_name=PLAIN_NAME)
    async def fleet_plain(sent: float) -> list[float]:
        return [sent, time.time()]

    async def ready(_: TaskiqState) -> None:
        async with Redis.from_url(s.redis_url) as redis:
            await redis.incr(s.ready_key())

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, ready)
    return FleetApp(s, broker, task)


def item(sent: float, index: int, keys: int) -> Any:
    """The ``index``-th message's item: its send time, and its key (round robin).

    :param keys: the keys of the run (0: no key, the item is the send time).
    """
    return [sent, float(index % keys)] if keys else sent


def _sent_key(item: Any) -> tuple[float, float]:
    """An item's send time and key (-1 without keys)."""
    if isinstance(item, list):
        return float(item[0]), float(item[1])
    return float(item), -1.0


def _key(item: Any) -> float:
    """The ``batch_key`` of a keyed item."""
    return _sent_key(item)[1]


@functools.cache
def _from_env() -> FleetApp:
    return build(FleetSettings.from_env())


def __getattr__(name: str) -> Any:
    # ``taskiq worker bench.fleet_app:broker`` reads the attribute once.
    if name == "broker":
        return _from_env().broker
    raise AttributeError(name)
