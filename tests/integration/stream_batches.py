"""Helpers for the tests of batched messages waiting in Redis (``redis_batches``).

A "source" is one worker's view: a stream broker with its own consumer
name, its ``StreamTransport`` and that transport's ``StreamBatches`` (or
a list broker, its ``ListTransport`` and ``ListBatches``: ``list_source``).
"""

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from taskiq_batching import BatchedTask, BatchingMiddleware, batch_task
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.redis_batches import StreamBatches, TaskStreams
from taskiq_batching.transports.redis_batches_base import RedisBatches
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_list_batches import ListBatches
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.redis_keys import delete_matching

TransportT = TypeVar("TransportT")
BatchesT = TypeVar("BatchesT", bound=RedisBatches)


def make_broker(
    url: str,
    queue: str,
    wait: bool = True,
    idle_ms: int = 600_000,
    protocol: int = 2,
) -> RedisStreamBroker:
    """A stream broker with the plugin, its own consumer name, the switch set."""
    middleware = BatchingMiddleware(wait_in_broker=wait)
    broker = RedisStreamBroker(
        url,
        queue_name=queue,
        consumer_name=f"c-{uuid.uuid4().hex[:8]}",
        idle_timeout=idle_ms,
        protocol=protocol,
    )
    broker.add_middlewares(middleware)
    return broker


Collect = BatchedTask[int, ..., Coroutine[Any, Any, int]]


def declare(
    broker: AsyncBroker, batch_size: int, batch_timeout: float | None, **options: Any
) -> Collect:
    """The batched task ``collect`` (its body is never run here)."""

    async def collect(items: list[int], tenant: str = "") -> int:
        return len(items)

    return batch_task(
        broker,
        task_name="collect",
        batch_size=batch_size,
        batch_timeout=batch_timeout,
        **options,
    )(collect)


def spec_of(task: Collect) -> BatchSpec:
    spec = getattr(task.task, "batch_spec", None)
    assert isinstance(spec, BatchSpec)
    return spec


def make_list_broker(url: str, queue: str, wait: bool = True) -> ListQueueBroker:
    """A list broker with the plugin, the switch set.

    Set in the instance's ``__dict__``: that works before and after the
    middleware takes ``wait_in_broker`` (the worker side's branch).
    """
    middleware = BatchingMiddleware()
    vars(middleware)["wait_in_broker"] = wait
    broker = ListQueueBroker(url, queue_name=queue)
    broker.add_middlewares(middleware)
    return broker


@dataclass
class Source(Generic[TransportT, BatchesT]):
    """One worker's transport and its batch source."""

    broker: Any
    transport: TransportT
    batches: BatchesT
    spec: BatchSpec
    taken: list[tuple[float, TakenBatch]] = field(default_factory=list)

    @property
    def names(self) -> TaskStreams:
        return self.batches.names(self.spec.task_name)


StreamSource = Source[StreamTransport, StreamBatches]
ListSource = Source[ListTransport, ListBatches]


def source(broker: Any, spec: BatchSpec) -> StreamSource:
    transport = StreamTransport(broker, wait_in_broker=True)
    assert transport.stream_batches is not None
    return Source(broker, transport, transport.stream_batches, spec)


def list_source(broker: Any, spec: BatchSpec) -> ListSource:
    transport = ListTransport(broker, wait_in_broker=True)
    assert transport.list_batches is not None
    return Source(broker, transport, transport.list_batches, spec)


def stream_sources(
    url: str,
    queue: str,
    count: int,
    size: int,
    timeout: float | None,
    protocol: int = 2,
) -> list[StreamSource]:
    """``count`` workers' sources on a stream queue, each with its own broker.

    :param size: the task's ``batch_size``; ``timeout`` its ``batch_timeout``.
    :param protocol: the RESP version of each broker's client.
    """
    found = []
    for _ in range(count):
        broker = make_broker(url, queue, protocol=protocol)
        found.append(source(broker, spec_of(declare(broker, size, timeout))))
    return found


def list_sources(
    url: str, queue: str, count: int, size: int, timeout: float | None
) -> list[ListSource]:
    """``count`` workers' sources on a list queue, each with its own broker."""
    found = []
    for _ in range(count):
        broker = make_list_broker(url, queue)
        found.append(list_source(broker, spec_of(declare(broker, size, timeout))))
    return found


def task_ids(batch: TakenBatch) -> list[str]:
    return [json.loads(d.data)["task_id"] for d in batch.deliveries]


async def take_until(
    src: "Source[Any, Any]",
    done: "asyncio.Event",
    taken: Callable[[], None] = lambda: None,
    room: int = 1,
) -> None:
    """A taker loop as a worker runs it, until ``done`` is set.

    ``taken`` is called after each batch taken (and acked).
    """
    while not done.is_set():
        got = await src.batches.take(src.spec, room)
        for batch in got.batches:
            src.taken.append((time.time(), batch))
            await src.transport.ack([d.handle for d in batch.deliveries])
            taken()
        if got.batches:
            continue
        if got.wait_seconds is not None:
            await asyncio.sleep(min(got.wait_seconds, src.batches.poll_seconds))
        else:
            await src.batches.idle([src.spec], 0.2)


async def clean(redis: Redis, names: TaskStreams, queue: str) -> None:
    tag = names.keys[: names.keys.index("}") + 1]
    await delete_matching(redis, f"{tag.replace('{', '[{]')}*", f"{queue}*")


def all_ids(sources: "Sequence[Source[Any, Any]]") -> list[str]:
    return [i for s in sources for _, batch in s.taken for i in task_ids(batch)]


async def run_sources(
    sources: "Sequence[Source[Any, Any]]", until: int, timeout: float = 30
) -> None:
    """Run a taker loop per source until ``until`` messages were taken in all."""
    done = asyncio.Event()

    def taken() -> None:
        if len(all_ids(sources)) >= until:
            done.set()

    takers = [asyncio.ensure_future(take_until(s, done, taken)) for s in sources]
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        done.set()
        await asyncio.gather(*takers)
