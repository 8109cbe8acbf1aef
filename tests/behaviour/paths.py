"""The paths a batched message can take, behind one interface, for parity tests.

* ``inmemory``: ``InMemoryBroker``; taskiq's ``kick`` hands each message to
  the plugin directly.
* ``generic``: a broker the plugin knows nothing about (``QueueBroker``),
  read through its own ``listen()`` by taskiq's Receiver: the generic
  transport.
* ``redis-stream`` and ``redis-list``: taskiq-redis brokers on the real
  Redis, read by the Redis transports (chunks, packed reads, bulk acks and
  result writes).
* ``nats``: taskiq-nats's ``PullBasedJetStreamBroker`` on the real NATS
  (JetStream), read by the NATS transport (chunked fetches, bulk acks),
  results in memory.

Every path records the same journal: per task_id, the middleware hooks
called (and the id of the message object each got) and its acks.
"""

import asyncio
import contextlib
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import (
    AckableMessage,
    AsyncBroker,
    InMemoryBroker,
    TaskiqMessage,
    TaskiqMiddleware,
    TaskiqResult,
)
from taskiq.acks import AcknowledgeType
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq.serializers import JSONSerializer
from taskiq.utils import maybe_awaitable
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_batching import BatchingMiddleware
from taskiq_batching.transports import Delivery, Transport, transport_for
from taskiq_batching.worker.decode import decode
from tests.behaviour.nats_streams import delete_streams, sweep_stale
from tests.helpers import QueueBroker, running_worker
from tests.redis_keys import delete_matching, queue_patterns

PATHS = ["inmemory", "generic", "redis-stream", "redis-list", "nats"]


@dataclass
class Journal:
    """What happened to each message, in order: ``(event, message id)``."""

    events: defaultdict[str, list[tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The name of each transport the worker was given (``Transport.name``).
    transports: list[str] = field(default_factory=list)

    def record(self, task_id: str, event: str, message: object = None) -> None:
        self.events[task_id].append((event, id(message)))
        self._changed.set()

    async def wait(self, task_ids: Sequence[str], event: str, timeout: float) -> None:
        """Wait until each of ``task_ids`` has had ``event``."""

        async def seen() -> None:
            while not all(event in self.names(t) for t in task_ids):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), timeout)

    def names(self, task_id: str) -> list[str]:
        return [event for event, _ in self.events[task_id]]

    def objects(self, task_id: str) -> set[int]:
        """The ids of the message objects the hooks got (acks excluded)."""
        return {obj for event, obj in self.events[task_id] if event != "ack"}


class JournalMiddleware(TaskiqMiddleware):
    """Records every per-message hook taskiq calls on a worker."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self.journal.record(message.task_id, "pre_execute", message)
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], error: BaseException
    ) -> None:
        self.journal.record(message.task_id, "on_error", message)

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.journal.record(message.task_id, "post_execute", message)

    def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.journal.record(message.task_id, "post_save", message)


class RecordingTransport:
    """A transport that records, per task_id, the acks the worker sends."""

    def __init__(self, inner: Transport, broker: AsyncBroker, journal: Journal):
        journal.transports.append(inner.name)
        self._inner = inner
        self._broker = broker
        self._journal = journal
        self._task_ids: dict[Any, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def batches(self) -> Any:
        """The inner transport's batch source, its takes learned too."""
        source = getattr(self._inner, "batches", None)
        return None if source is None else _LearningSource(source, self._learn)

    def _learn(self, deliveries: list[Delivery]) -> list[Delivery]:
        for delivery in deliveries:
            envelope = decode(self._broker, delivery.data)
            if envelope is not None and delivery.handle is not None:
                self._task_ids[_key(delivery.handle)] = envelope.task_id
        return deliveries

    async def read(self, limit: int) -> list[Delivery]:
        return self._learn(await self._inner.read(limit))

    async def interrupt(self, reading: Any) -> list[Delivery]:
        return self._learn(await self._inner.interrupt(reading))

    async def reclaim(self) -> list[Delivery]:
        return self._learn(await self._inner.reclaim())

    async def ack(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            self._journal.record(self._task_ids[_key(handle)], "ack")
        await self._inner.ack(handles)

    def for_receiver(self, delivery: Delivery) -> bytes | AckableMessage:
        """A plain message's ack is recorded too (taskiq's Receiver calls it)."""
        handed = self._inner.for_receiver(delivery)
        if not isinstance(handed, AckableMessage):
            return handed
        task_id = self._task_ids.get(_key(delivery.handle), "?")
        ack = handed.ack

        async def recorded() -> None:
            self._journal.record(task_id, "ack")
            await maybe_awaitable(ack())

        return AckableMessage(data=handed.data, ack=recorded)


class _LearningSource:
    """A batch source whose taken deliveries the recording transport learns."""

    def __init__(self, inner: Any, learn: Any) -> None:
        self._inner = inner
        self._learn = learn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def take(
        self, spec: Any, room: int, needs: Any = None, *, full_only: bool = False
    ) -> Any:
        taken = await self._inner.take(spec, room, needs, full_only=full_only)
        for batch in taken.batches:
            self._learn(batch.deliveries)
        return taken


def _key(handle: Any) -> Any:
    return handle if isinstance(handle, tuple) else id(handle)


@dataclass
class Path:
    """A broker set up for one path, and what its journal saw."""

    name: str
    broker: AsyncBroker
    journal: Journal
    acks: bool
    #: Batched messages wait in the broker (``wait_in_broker``, a Redis or
    #: NATS path): nothing forms in the worker's buffers (docs/fleet.md).
    waits_in_broker: bool = False

    @property
    def batching(self) -> BatchingMiddleware:
        return BatchingMiddleware.of(self.broker)


@contextlib.asynccontextmanager
async def open_path(
    name: str,
    redis_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
    middlewares: Sequence[TaskiqMiddleware] = (),
    nats_url: str | None = None,
) -> AsyncIterator[Path]:
    """A broker on ``name``'s path with the plugin and a journal.

    Declare tasks on ``path.broker``, then run its worker with ``running``.
    """
    journal = Journal()
    queue = f"tb-parity-{uuid.uuid4().hex[:10]}"
    broker: AsyncBroker
    if name == "inmemory":
        broker = InMemoryBroker(max_stored_results=-1)
    elif name == "generic":
        broker = QueueBroker()
        broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    elif name == "nats":
        assert nats_url is not None
        await sweep_stale(nats_url)
        broker = PullBasedJetStreamBroker(
            nats_url, subject=f"{queue}.tasks", stream_name=queue, durable=queue
        )
        broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    else:
        assert redis_url is not None
        kind = ListQueueBroker if name == "redis-list" else RedisStreamBroker
        broker = kind(redis_url, queue_name=queue).with_result_backend(
            RedisAsyncResultBackend(
                redis_url,
                prefix_str=queue,
                result_ex_time=60,
                serializer=JSONSerializer(),
            ),
        )
    # TB_WAIT_IN_BROKER=1: the fleet path (docs/fleet.md), to see
    # what of the suite it honours; not part of the suite's run.
    wait = True if os.environ.get("TB_WAIT_IN_BROKER") else None
    middleware = BatchingMiddleware(wait_in_broker=wait)
    broker.add_middlewares(middleware, JournalMiddleware(journal))
    if middlewares:
        broker.add_middlewares(*middlewares)
    # The list transport's pop blocks 1 s when the list is empty, and a stop
    # waits for the pop in progress (what it popped exists nowhere else):
    # 0.1 s takes the same path, without a second's wait per test.
    monkeypatch.setattr("taskiq_batching.transports.redis_list.BLOCK_SECONDS", 0.1)
    # Likewise a stop lets the NATS pull request in progress end: it lingers
    # 1 s on an idle consumer, 0.1 s here.
    monkeypatch.setattr("taskiq_batching.transports.nats_pull.FETCH_TIMEOUT", 0.1)
    monkeypatch.setattr(
        "taskiq_batching.worker.hook.transport_for",
        lambda b, listen=None, **choice: RecordingTransport(
            transport_for(b, listen, **choice), b, journal
        ),
    )
    path = Path(
        name,
        broker,
        journal,
        acks=name in ("generic", "redis-stream", "nats"),
        waits_in_broker=bool(wait) and (name.startswith("redis") or name == "nats"),
    )
    try:
        yield path
    finally:
        if redis_url is not None and name.startswith("redis"):
            async with Redis.from_url(redis_url) as redis:
                # The main queue's keys, and batched tasks' ({<queue>:<task>}...).
                await delete_matching(redis, *queue_patterns(queue))
        if nats_url is not None and name == "nats":
            # The batch stream too (``wait_in_broker``: made by the worker
            # or the producer).
            await delete_streams(nats_url, queue)


@contextlib.asynccontextmanager
async def running(
    path: Path, ack_type: AcknowledgeType | None = None
) -> AsyncIterator[None]:
    """Run the path's worker (none for ``inmemory``) around the body."""
    if path.name == "inmemory":
        assert isinstance(path.broker, InMemoryBroker)
        await path.broker.startup()
        try:
            yield
        finally:
            await path.broker.wait_all()
            await path.broker.shutdown()
            await path.broker.wait_all()
        return
    await path.broker.startup()
    # A NATS broker's startup connects its client: only once.
    async with running_worker(
        path.broker, ack_type=ack_type, run_startup=path.name != "nats"
    ):
        yield
