"""Parking: a parked message is decoded once, its decoded copy bounded in bytes."""

import asyncio
from collections import Counter
from typing import Any

import pytest
from taskiq import AsyncBroker

from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.core.buffer import Envelope
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.worker import parking, routing
from taskiq_batching.worker.decode import decode
from tests.helpers import QueueBroker, queue_broker, running_worker

pytestmark = pytest.mark.timeout(30)

MESSAGES = 20


class Decodes(Counter[bytes]):
    """The router's decodes of each message's bytes; ``all_read`` once each is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.all_read = asyncio.Event()

        def counting(broker: AsyncBroker, data: bytes) -> Envelope | None:
            self[data] += 1
            if len(self) == MESSAGES:
                self.all_read.set()
            return decode(broker, data)

        monkeypatch.setattr(routing, "decode", counting)


async def run_parked(broker: QueueBroker, decodes: Decodes) -> None:
    """Send MESSAGES to a slow task (2 held at most), all read before it runs."""
    release = asyncio.Event()

    @batch_task(broker, batch_size=1, task_name="slow")
    async def slow(items: list[int]) -> int:
        await release.wait()
        return items[0]

    sent = [await slow.kiq(i) for i in range(MESSAGES)]
    async with running_worker(broker):
        try:
            # Every message read: 2 held, the others parked.
            await decodes.all_read.wait()
        finally:
            release.set()
        await broker.wait_acked(MESSAGES)
    for i, task in enumerate(sent):
        assert (await task.wait_result(timeout=10)).return_value == i


async def test_a_parked_message_is_decoded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Decodes(monkeypatch)
    await run_parked(queue_broker(), calls)
    assert len(calls) == MESSAGES
    assert set(calls.values()) == {1}


async def test_past_its_bytes_a_parked_message_keeps_no_decoded_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parking, "PARK_DECODED_BYTES", 0)
    calls = Decodes(monkeypatch)
    await run_parked(queue_broker(), calls)
    # The two held at once were decoded once; every parked one again.
    assert len(calls) == MESSAGES
    assert sorted(calls.values()) == [1, 1] + [2] * (MESSAGES - 2)


def test_decoded_copies_are_counted_in_wire_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parking, "PARK_DECODED_BYTES", 25)
    parked = parking.Parking()
    envelope = Envelope("id", "task", {}, [1], {})
    for _ in range(3):
        parked.park("task", Delivery(b"x" * 10, None), envelope)
    assert (parked.count, parked.size, parked.decoded_size) == (3, 30, 20)
    kept = [one[0] is not None for one in parked.waiting["task"]]
    assert kept == [True, True, False]
    taken = list(parked.unpark(_TakesOne()))  # type: ignore[arg-type]
    assert [one[0] is envelope for one in taken] == [True]
    assert (parked.count, parked.size, parked.decoded_size) == (2, 20, 10)
    assert len(parked.clear()) == 2
    assert (parked.count, parked.size, parked.decoded_size) == (0, 0, 0)


class _TakesOne:
    """An admission that takes one message, then refuses."""

    def __init__(self) -> None:
        self.left = 1

    def take(self, task_name: str, size: Any) -> bool:
        self.left -= 1
        return self.left >= 0


async def test_a_pass_takes_up_to_each_bound_then_refuses() -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=2, batch_max_bytes=100, task_name="bounded")
    async def bounded(items: list[int]) -> None: ...

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    bounds = batcher.bounds
    # 4 messages and 200 bytes held at most: the bytes bound first.
    admission = parking.Admission(batcher.bounds)
    assert [admission.take("bounded", 60) for _ in range(4)] == [True] * 3 + [False]
    assert admission.take("bounded", 20)  # what still fits is taken
    assert bounds.held["bounded"] == 4
    # Then the messages bound, with bytes to spare.
    bounds.held["bounded"] = 0
    admission = parking.Admission(batcher.bounds)
    assert [admission.take("bounded", 1) for _ in range(5)] == [True] * 4 + [False]
    # Counts held already (bytes buffered) are seen by the next pass.
    bounds.held["bounded"], bounds.held_bytes["bounded"] = 1, 150
    admission = parking.Admission(batcher.bounds)
    assert [admission.take("bounded", 30) for _ in range(2)] == [True, False]
    # A message over the bound alone is still taken when nothing is held.
    bounds.held["bounded"], bounds.held_bytes["bounded"] = 0, 0
    assert parking.Admission(batcher.bounds).take("bounded", 1_000)
