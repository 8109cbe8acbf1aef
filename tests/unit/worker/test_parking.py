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

    def allowance(self, task_name: str) -> tuple[int, int]:
        return 0, 0  # nothing taken without ``take``

    def took(self, task_name: str, count: int, size: int) -> None:
        assert count == 0

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


@pytest.mark.parametrize(
    ("sizes", "held", "held_bytes", "expected"),
    [
        ([60, 60, 60, 60, 20], 0, 0, 3),  # the bytes bound (200) first
        ([1] * 6, 0, 0, 4),  # the messages bound (4)
        ([30, 30], 1, 150, 1),  # counts held already
        ([1_000, 1], 0, 0, 1),  # over the bound alone: taken, nothing after
        ([60, 60, 60, 20], 0, 0, 4),  # what still fits after the run
    ],
)
async def test_unparking_takes_what_take_would_one_at_a_time(
    sizes: list[int], held: int, held_bytes: int, expected: int
) -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=2, batch_max_bytes=100, task_name="bounded")
    async def bounded(items: list[int]) -> None: ...

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    bounds = batcher.bounds

    def run() -> int:
        bounds.held["bounded"], bounds.held_bytes["bounded"] = held, held_bytes
        parked = parking.Parking()
        for size in sizes:
            parked.park("bounded", Delivery(b"x" * size, None))
        taken = parked.unpark(parking.Admission(bounds))
        assert parked.count == len(sizes) - len(taken)
        assert parked.size == sum(sizes) - sum(len(one[1].data) for one in taken)
        return len(taken)

    one_at_a_time = parking.Admission(bounds)
    bounds.held["bounded"], bounds.held_bytes["bounded"] = held, held_bytes
    taken = 0
    for size in sizes:
        if not one_at_a_time.take("bounded", size):
            break
        taken += 1
    assert taken == expected
    held_then = bounds.held["bounded"]
    assert run() == expected
    assert bounds.held["bounded"] == held_then  # counted once each


async def test_a_parked_run_within_the_bounds_is_taken_without_a_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = queue_broker()

    @batch_task(broker, batch_size=2, task_name="roomy")
    async def roomy(items: list[int]) -> None: ...

    batcher = BatchingMiddleware.of(broker).batcher
    assert batcher is not None
    calls: list[int] = []
    take = parking.Admission.take

    def counted(self: parking.Admission, task_name: str, size: int) -> bool:
        calls.append(size)
        return take(self, task_name, size)

    monkeypatch.setattr(parking.Admission, "take", counted)
    parked = parking.Parking()
    for _ in range(3):
        parked.park("roomy", Delivery(b"x" * 10, None))
    assert len(parked.unpark(parking.Admission(batcher.bounds))) == 3
    assert calls == []
    assert batcher.bounds.held["roomy"] == 3
