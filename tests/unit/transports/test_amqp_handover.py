"""``amqp_handover``: a full task consumer passes its role on, then takes it again."""

import asyncio
import time
from collections import deque
from typing import Any

import pytest
from taskiq_aio_pika import AioPikaBroker

from taskiq_batching.transports import amqp_handovers
from taskiq_batching.transports.amqp import AmqpTransport
from taskiq_batching.transports.amqp_handover import Handover
from taskiq_batching.transports.amqp_handovers import Handovers
from taskiq_batching.transports.amqp_inbox import Inbox
from taskiq_batching.transports.delivery import Delivery


class FakeQueue:
    name = "jobs.batch.collect"

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def cancel(self, tag: str, timeout: float) -> None:
        await self.gate.wait()
        self.cancelled.append(tag)


class FakeChannel:
    def __init__(self) -> None:
        self.prefetch: list[int] = []

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch.append(prefetch_count)

    async def get_underlay_channel(self) -> "FakeChannel":
        return self


class Fleet:
    """One task's handover, its channel's unsettled deliveries and the calls."""

    def __init__(self, limit: int = 30, batch_size: int = 10) -> None:
        self.channel, self.queue = FakeChannel(), FakeQueue()
        self.pending: dict[int, str] = {}
        self.limits = {"t0": limit}
        self.consumed: list[str] = []
        self.forgotten: list[str] = []
        self.stopping = False
        self.untapped: list[str] = []
        self.handovers = Handovers(
            self.limits,
            lambda channel: self.pending,
            lambda channel, tags: self.untapped.extend(tags),
        )
        self.handovers.stopping = lambda: self.stopping
        self.handover = Handover(
            "collect", self.channel, self.queue, "t0", limit, batch_size, 1.0
        )
        self.next_tag = 1

    async def start(self) -> None:
        async def consume(channel: Any, queue: Any, tag: str) -> None:
            self.consumed.append(tag)

        await self.handovers.add(self.handover, consume, self.forgotten.extend)

    def deliver(self, count: int) -> None:
        tag = self.handover.tag
        assert tag is not None
        for _ in range(count):
            self.pending[self.next_tag] = tag
            self.next_tag += 1

    def settle(self, count: int) -> None:
        for tag in sorted(self.pending)[:count]:
            del self.pending[tag]


async def test_a_full_consumer_passes_its_role_and_takes_it_again_with_room() -> None:
    fleet = Fleet()
    await fleet.start()
    fleet.deliver(29)
    fleet.handovers.check()
    assert fleet.handover.tag == "t0"  # room left: it stays active
    fleet.deliver(1)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert (fleet.forgotten, fleet.queue.cancelled) == (["t0"], ["t0"])
    assert fleet.handover.tag is None
    fleet.settle(9)
    fleet.handovers.check()
    assert fleet.consumed == []  # no room for a whole batch yet
    fleet.settle(1)
    fleet.handovers.check()
    await fleet.handovers.settled()
    [again] = fleet.consumed
    assert fleet.handover.tag == again != "t0"
    assert fleet.channel.prefetch == [10]  # never more than 30 unsettled
    assert fleet.limits == {"t0": 30, again: 30}  # t0's 20 are still held
    assert fleet.untapped == []
    fleet.deliver(10)  # its window is full: the role goes on again
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.queue.cancelled == ["t0", again]
    fleet.settle(30)
    fleet.handovers.check()
    await fleet.handovers.settled()
    [_, third] = fleet.consumed
    assert fleet.limits == {third: 30}  # the retired tags hold nothing now
    assert fleet.untapped == ["t0", again]  # their deliveries all came
    assert fleet.channel.prefetch == [10, 30]


async def test_acks_during_a_cancel_are_checked_when_it_ends() -> None:
    """Nothing else may come (no delivery, no ack): the end of a move checks."""
    fleet = Fleet()
    await fleet.start()
    fleet.queue.gate.clear()
    fleet.deliver(30)
    fleet.handovers.check()
    fleet.settle(30)  # every batch acked while the cancel is under way
    fleet.handovers.check()  # ignored: one move at a time
    fleet.queue.gate.set()
    await fleet.handovers.settled()
    await fleet.handovers.settled()
    assert len(fleet.consumed) == 1
    assert fleet.channel.prefetch == [30]


async def test_a_stopping_worker_moves_nothing() -> None:
    fleet = Fleet()
    await fleet.start()
    fleet.stopping = True
    fleet.deliver(30)
    fleet.handovers.check()
    assert (fleet.handover.tag, fleet.forgotten) == ("t0", [])


async def test_a_read_waits_for_an_overdue_backlog_only() -> None:
    fleet = Fleet()
    await fleet.start()
    now = time.time()
    handle = (fleet.channel, 1, "t0")

    def unread(count: int, sent_at: float) -> "deque[Delivery]":
        return deque(Delivery(b"", handle, sent_at=sent_at) for _ in range(count))

    short = fleet.handovers.short
    assert short(unread(3, now - 2.0), 100, now)  # overdue, more coming
    assert not short(unread(3, now - 0.5), 100, now)  # fresh: waits its timeout
    assert not short(unread(10, now - 2.0), 100, now)  # a whole batch
    assert not short(unread(3, now - 2.0), 3, now)  # all the read takes
    assert not short(deque([Delivery(b"", None, sent_at=now - 2.0)]), 100, now)
    fleet.handover.tag = None  # passed on: nothing more comes until acks
    assert not short(unread(3, now - 2.0), 100, now)


async def test_a_read_of_an_overdue_backlog_waits_until_a_batch_came(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three overdue deliveries of a new active consumer: seven more are coming."""
    # Bounds far beyond the test's few steps: a loaded box ends no wait early.
    monkeypatch.setattr(amqp_handovers, "BURST_GAP", 30.0)
    monkeypatch.setattr(amqp_handovers, "BURST_MAX", 60.0)
    fleet = Fleet()
    await fleet.start()
    inbox = Inbox()
    sent_at = time.time() - 2.0

    def arrive(count: int) -> None:
        for _ in range(count):
            handle = (fleet.channel, len(inbox.unread) + 1, "t0")
            inbox.unread.append(Delivery(b"", handle, sent_at=sent_at))
        inbox.arrived.set()

    arrive(3)
    reading = asyncio.ensure_future(fleet.handovers.burst(inbox, 100))
    await asyncio.sleep(0)  # one step: it runs up to its wait
    assert not reading.done()  # a read would have taken 3
    arrive(6)
    await asyncio.sleep(0)
    assert not reading.done()
    arrive(1)
    await reading
    assert len(inbox.unread) == 10


async def test_a_task_is_passed_on_until_its_consumer_is_active_again() -> None:
    """Its partial buffer cannot grow meanwhile (``worker/pump.py`` flushes it)."""
    fleet = Fleet()
    await fleet.start()
    fleet.deliver(29)
    fleet.handovers.check()
    assert fleet.handovers.passed_on() == []  # active, with room
    fleet.deliver(1)
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is None
    assert fleet.handovers.passed_on() == ["collect"]
    fleet.settle(10)  # a batch acked: it consumes again, behind the others
    fleet.handovers.check()
    await fleet.handovers.settled()
    assert fleet.handover.tag is not None
    assert fleet.handovers.passed_on() == ["collect"]  # nothing came yet
    fleet.deliver(1)  # RabbitMQ made it active: more may come
    assert fleet.handovers.passed_on() == []
    fleet.settle(21)
    assert fleet.handovers.passed_on() == []  # until it passes the role again


async def test_the_transport_lists_the_tasks_passed_on() -> None:
    plain = AmqpTransport(AioPikaBroker("amqp://nowhere/", qos=10))
    assert plain.passed_on() == []
    transport = AmqpTransport(AioPikaBroker("amqp://nowhere/"), wait_in_broker=True)
    assert transport.forwarder is not None
    handovers = transport.forwarder.handovers
    handover = Handover("collect", FakeChannel(), FakeQueue(), "t0", 30, 10, 1.0)
    handovers.each.append(handover)
    assert transport.passed_on() == []
    handover.tag, handover.behind = None, True  # as after a pass (above)
    assert transport.passed_on() == ["collect"]
