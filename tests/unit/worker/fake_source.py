"""A ``BatchSource`` and ``Forwarder`` in memory, for the taker's tests.

Messages wait in ``FakeSource`` per task and key, each with the event-loop
time it arrived; a key's batch is due when it holds ``batch_size``
messages (reason ``size``) or its oldest one waited ``batch_timeout``
(reason ``timeout``). ``FakeForwarder`` moves what the pump reads on the
main queue into the source and acks it there, as a plugin producer's
send would have put it. Every call is recorded for the tests.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker

from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.batch_source import Taken, TakenBatch
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.generic import GenericTransport, Listen


def no_key(data: bytes) -> str:
    return "-"


def tenant_key(data: bytes) -> str:
    """The item's tenant (item // 5), as the key."""
    return str(json.loads(data)["args"][0] // 5)


@dataclass
class Waiting:
    data: bytes
    arrived: float


@dataclass
class FakeSource:
    """Batches of every batched task wait here until due."""

    key_of: Callable[[bytes], str] = no_key
    poll_seconds: float = 0.02
    #: Task names served (None: every batched task).
    served: set[str] | None = None
    waiting: dict[tuple[str, str], list[Waiting]] = field(default_factory=dict)
    #: ``(task_name, room)`` of each take.
    takes: list[tuple[str, int]] = field(default_factory=list)
    take_times: list[float] = field(default_factory=list)
    #: (task, what a short remainder lacked) per key of each take's needs.
    needs: list[tuple[str, int]] = field(default_factory=list)
    idles: int = 0
    #: Takes of full batches only (the taker's read-ahead).
    ahead_takes: int = 0
    #: Acked task ids, in order.
    acked: list[str] = field(default_factory=list)
    #: Raised by every take and idle while set.
    error: BaseException | None = None
    #: While set, a take waits for it (a slow broker).
    hold_takes: asyncio.Event | None = None
    #: Seconds a take's reply takes to come back once released.
    reply_seconds: float = 0.0
    take_started: asyncio.Event = field(default_factory=asyncio.Event)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def serves(self, spec: BatchSpec) -> bool:
        return self.served is None or spec.task_name in self.served

    def put(self, task_name: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        key = (task_name, self.key_of(data))
        self.waiting.setdefault(key, []).append(Waiting(data, loop.time()))
        self._arrived.set()

    def left(self) -> int:
        return sum(len(messages) for messages in self.waiting.values())

    async def take(
        self,
        spec: BatchSpec,
        room: int,
        needs: Mapping[str, int] | None = None,
        *,
        full_only: bool = False,
    ) -> Taken:
        loop = asyncio.get_running_loop()
        self.takes.append((spec.task_name, room))
        if full_only:
            self.ahead_takes += 1
        self.take_times.append(loop.time())
        self.called.set()
        self.take_started.set()
        if self.hold_takes is not None:
            await self.hold_takes.wait()
        if self.reply_seconds:
            await asyncio.sleep(self.reply_seconds)
        if self.error is not None:
            raise self.error
        for need in (needs or {}).values():
            self.needs.append((spec.task_name, need))
        return self._due(spec, room, loop.time(), needs or {}, full_only)

    def _due(
        self,
        spec: BatchSpec,
        room: int,
        now: float,
        needs: Mapping[str, int],
        full_only: bool = False,
    ) -> Taken:
        settings = spec.settings
        timeout = settings.batch_timeout or 3600.0
        batches: list[TakenBatch] = []
        waits: list[float] = []
        for (task_name, key), messages in list(self.waiting.items()):
            if task_name != spec.task_name or not messages:
                continue
            want = needs.get(key, settings.batch_size)
            full = len(messages) >= want
            due = messages[0].arrived + timeout - now
            if len(batches) < room and (full or (due <= 0 and not full_only)):
                taken = messages[:want]
                del messages[:want]
                deliveries = [self._delivery(one.data) for one in taken]
                reason = "size" if full else "timeout"
                batches.append(TakenBatch(key, deliveries, reason))
            if messages:
                waits.append(max(messages[0].arrived + timeout - now, 0.0))
        return Taken(batches, min(waits) if waits else None)

    def _delivery(self, data: bytes) -> Delivery:
        task_id = json.loads(data)["task_id"]
        return Delivery(data, lambda: self.acked.append(task_id))

    async def idle(self, specs: Sequence[BatchSpec], timeout_seconds: float) -> None:
        self.idles += 1
        self.called.set()
        if self.error is not None:
            raise self.error
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_seconds)


@dataclass
class FakeForwarder:
    """Moves main-queue messages into the source (or fails while ``error``)."""

    source: FakeSource
    error: BaseException | None = None
    forwarded: int = 0

    async def forward(
        self, deliveries: Sequence[tuple[Delivery, BatchSpec, str]]
    ) -> None:
        if self.error is not None:
            raise self.error
        for delivery, spec, _ in deliveries:
            self.source.put(spec.task_name, delivery.data)
            await delivery.handle()  # acked on the main queue
        self.forwarded += len(deliveries)


class FillingForwarder(FakeForwarder):
    """A forwarder that forwards only to fill batches (as RabbitMQ's)."""

    forward_only_to_fill = True


class SourceTransport(GenericTransport):
    """The generic transport with a batch source (and a forwarder)."""

    def __init__(
        self,
        broker: AsyncBroker,
        listen: Listen | None,
        batches: FakeSource,
        forwarder: FakeForwarder | None,
    ) -> None:
        super().__init__(broker, listen)
        self.batches = batches
        self.forwarder = forwarder


def use_source(
    monkeypatch: Any, source: FakeSource, forwarder: FakeForwarder | None = None
) -> list[dict[str, Any]]:
    """Make the worker's transport a ``SourceTransport``; the registry's options."""
    calls: list[dict[str, Any]] = []

    def transport_for(
        broker: AsyncBroker, listen: Listen | None = None, **options: Any
    ) -> GenericTransport:
        calls.append(options)
        if options.get("wait_in_broker", True) is False:
            return GenericTransport(broker, listen)
        return SourceTransport(broker, listen, source, forwarder)

    monkeypatch.setattr("taskiq_batching.worker.hook.transport_for", transport_for)
    return calls
