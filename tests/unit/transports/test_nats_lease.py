"""The NATS lease reader (``wait_in_broker``) on a fake client: requests, rounds.

The fake records every publish; messages, statuses and the ``free`` word
are handed to the subscriptions' callbacks by the test, and each step
waits for the reader's next publish or its wake (no server, no sleeps).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from taskiq_batching.transports import nats_lease
from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.nats_lease import IDLE_EXPIRES, LeaseReader
from taskiq_batching.transports.nats_pull import SENT_AT

pytestmark = pytest.mark.timeout(10)

API = "$JS.API.CONSUMER.MSG.NEXT.s-batch.d-b-x"
FREE = "_tb.free.d-b-x"


class Client:
    """What the reader uses of a nats-py client; records every publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []
        self.callbacks: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def new_inbox(self) -> str:
        return "_INBOX.t"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.callbacks[subject] = cb

        async def unsubscribe() -> None:
            pass

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = ""
    ) -> None:
        self.published.append((subject, payload, reply))
        self.changed.set()

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(p) for s, p, _ in self.published if s == API]

    def frees(self) -> int:
        return sum(s == FREE for s, _, _ in self.published)

    async def next_publish(self) -> None:
        """Wait for the reader's next publish."""
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), 5)

    async def message(
        self,
        sequence: int,
        sent_at: float,
        delivered: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        reply = f"$JS.ACK.s-batch.d-b-x.{delivered}.{sequence}.{sequence}.1.0"
        msg = SimpleNamespace(
            subject="t.batch.x",
            reply=reply,
            data=b"m",
            headers={SENT_AT: repr(sent_at), **(headers or {})},
        )
        await self.callbacks["_INBOX.t.*"](msg)

    async def status(self, code: str, serial: int) -> None:
        msg = SimpleNamespace(
            subject=f"_INBOX.t.{serial}", reply="", data=b"", headers={"Status": code}
        )
        await self.callbacks["_INBOX.t.*"](msg)


class Setup:
    """A reader of a task with ``batch_size=3, batch_timeout=0.5`` on the fake."""

    def __init__(self) -> None:
        self.client = Client()
        self.woken = asyncio.Event()
        self.reader = LeaseReader(self.client, API, "d-b-x", 3, 0.5, self.woken.set)

    async def ready(self) -> list[TakenBatch]:
        """Wait for a round to be handed over; take it (the worker's take)."""
        await asyncio.wait_for(self.woken.wait(), 5)
        self.woken.clear()
        return self.reader.take(1)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = Setup()
    await made.reader.start()
    yield made
    await made.reader.stop()


async def first_request(client: Client) -> None:
    while not client.requests():
        await client.next_publish()


async def test_nothing_is_asked_until_the_worker_takes(setup: Setup) -> None:
    await asyncio.sleep(0)
    assert setup.client.requests() == []  # no room said: no lease taken
    assert setup.reader.take(1) == []
    await first_request(setup.client)
    assert setup.client.requests() == [{"batch": 3, "expires": int(IDLE_EXPIRES * 1e9)}]


async def test_a_round_asks_for_what_completes_it_until_its_deadline(
    setup: Setup,
) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    sent = time.time()
    await client.message(1, sent)
    assert [d.sent_at for d in reader.round.held()] == [sent]  # the original send
    await client.status("408", 1)  # the idle request ended
    await client.next_publish()
    second = client.requests()[-1]
    assert second["batch"] == 2
    assert 0 < second["expires"] <= 0.5e9  # the first message's deadline
    await client.status("408", 2)
    [due] = await setup.ready()  # handed over at its deadline, from the send
    assert (due.reason, len(due.deliveries)) == ("timeout", 1)
    assert time.time() >= sent + 0.5 - 0.01


async def test_a_full_round_is_taken_whole_and_lets_the_slot_go(
    setup: Setup,
) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    for sequence in (1, 2, 3):
        await client.message(sequence, time.time())
    [full] = await setup.ready()
    assert (full.reason, [d.handle.sequence for d in full.deliveries]) == (
        "size",
        [1, 2, 3],
    )
    while not client.frees():
        await client.next_publish()
    # No more rounds until the worker has room again (it takes again).
    assert len(client.requests()) == 1
    assert reader.take(1) == []
    await client.next_publish()
    assert client.requests()[-1] == {"batch": 3, "expires": int(IDLE_EXPIRES * 1e9)}


async def test_a_short_remainder_asks_for_what_it_lacks(setup: Setup) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1, {"-": 1})
    await first_request(client)
    assert client.requests()[-1]["batch"] == 1
    await client.message(1, time.time())
    [round_] = await setup.ready()
    assert (round_.reason, len(round_.deliveries)) == ("size", 1)


async def test_a_batch_deadline_makes_the_round_due_by_it(setup: Setup) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    await client.message(1, time.time())
    await client.message(2, time.time(), headers={"batch_deadline": "0"})
    # Due at once, while its request still waits: handed over.
    [due] = await setup.ready()
    assert (due.reason, len(due.deliveries)) == ("deadline", 2)
    # The request goes on: what it brings opens the next round.
    await client.message(3, time.time())
    assert [d.handle.sequence for d in reader.round.held()] == [3]


async def test_a_refused_request_waits_for_the_free_word(setup: Setup) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    await client.status("409", 1)
    await asyncio.sleep(0)  # the reader takes the refusal (it asks nothing)
    assert len(client.requests()) == 1
    assert client.frees() == 0  # it never held the slot
    await client.callbacks[FREE](SimpleNamespace(data=b""))
    await client.next_publish()
    assert len(client.requests()) == 2


async def test_a_message_delivered_again_while_held_is_not_taken_twice(
    setup: Setup,
) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    await client.message(1, time.time())
    await client.message(1, time.time(), delivered=2)
    assert len(reader.round.held()) == 1
    assert reader.round.held()[0].handle.reply.startswith("$JS.ACK.s-batch.d-b-x.2.")


async def test_raw_messages_fill_a_round_and_one_acked_is_acked_again(
    setup: Setup,
) -> None:
    """A message without headers comes raw (reply bytes, data): into the
    round, sent at the stream's time; one acked already (its ack lost) is
    acked again by the reader's loop, not taken."""
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    reader.acked.add(9)
    again = "$JS.ACK.s-batch.d-b-x.1.9.9.1700000000000000000.0"
    reader._take(again.encode(), b"old")
    while (again, b"+ACK", "") not in client.published:
        await client.next_publish()
    assert reader.round.held() == []
    now = time.time()
    for sequence in (1, 2, 3):
        reply = f"$JS.ACK.s-batch.d-b-x.1.{sequence}.{sequence}.{int(now * 1e9)}.0"
        reader._take(reply.encode(), b"m%d" % sequence)
    [full] = await setup.ready()
    assert [d.data for d in full.deliveries] == [b"m1", b"m2", b"m3"]
    assert [d.handle.reply.split(".")[5] for d in full.deliveries] == ["1", "2", "3"]
    assert full.deliveries[0].sent_at == pytest.approx(now)


def raw(reader: LeaseReader, sequence: int, pending: int) -> None:
    """A message without headers, as parsed; ``pending`` left after it."""
    stored = int(time.time() * 1e9)
    reply = f"$JS.ACK.s-batch.d-b-x.1.{sequence}.{sequence}.{stored}.{pending}"
    reader._take(reply.encode(), b"m")


async def test_a_backlogs_next_full_round_is_asked_for_ahead(setup: Setup) -> None:
    """While the worker's slots run (``full_only``), a backlog's next round
    is asked for at once, taking only what is there (``no_wait``); without
    a backlog, or refused (another process waits), nothing more."""
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    for sequence in (1, 2, 3):
        raw(reader, sequence, pending=2)
    [first] = await setup.ready()
    assert (first.reason, len(first.deliveries)) == ("size", 3)
    assert reader.take(1, full_only=True) == []  # 2 left: no full round
    reader.last_reply = reader.last_reply.rsplit(".", 1)[0] + ".3"
    assert reader.take(1, full_only=True) == []
    while len(client.requests()) < 2:
        await client.next_publish()
    assert client.requests()[-1] == {"batch": 3, "no_wait": True}
    for sequence in (4, 5, 6):
        raw(reader, sequence, pending=5)
    await asyncio.wait_for(setup.woken.wait(), 5)
    [ahead] = reader.take(1, full_only=True)
    assert (ahead.reason, len(ahead.deliveries)) == ("size", 3)
    assert reader.take(1, full_only=True) == []
    while len(client.requests()) < 3:
        await client.next_publish()
    await client.status("409", 3)  # refused: no wait for the free word
    refused = time.monotonic()
    assert reader.take(1) == []
    while len(client.requests()) < 4:
        await client.next_publish()
    assert time.monotonic() - refused < IDLE_EXPIRES / 2
    assert client.requests()[-1] == {"batch": 3, "expires": int(IDLE_EXPIRES * 1e9)}


async def test_a_stop_gives_what_the_worker_never_took(setup: Setup) -> None:
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    for sequence in (1, 2, 3, 4):
        await client.message(sequence, time.time())
    await asyncio.wait_for(setup.woken.wait(), 5)
    left = await reader.stop()
    assert sorted(d.handle.sequence for d in left) == [1, 2, 3, 4]
    assert reader.take(1) == []


async def test_keys_are_handed_over_apart_and_the_round_keeps_the_slot(
    setup: Setup,
) -> None:
    """``batch_key``: a key full goes alone; the others wait for the deadline.

    A round counted as one would hand over (a, b, a) full at 3, each key
    a third of what it could be, and let the slot go to another process.
    """
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    sent = time.time()
    for sequence, key in ((1, "a"), (2, "b"), (3, "a")):
        await client.message(sequence, sent, headers={"Tb-Key": key})
    # The request brought what it asked; no key is full: it asks again at
    # once for what fills them all, until the round's deadline.
    while len(client.requests()) < 2:
        await client.next_publish()
    second = client.requests()[-1]
    assert second["batch"] == 3  # a lacks 1, b lacks 2
    assert 0 < second["expires"] <= 0.5e9
    assert client.frees() == 0
    assert not reader.ready
    await client.message(4, sent, headers={"Tb-Key": "a"})
    [full] = await setup.ready()
    assert (full.key, full.reason) == ("a", "size")
    assert [d.handle.sequence for d in full.deliveries] == [1, 3, 4]
    await client.status("408", 2)  # the round's deadline
    [due] = await setup.ready()
    assert (due.key, due.reason, [d.handle.sequence for d in due.deliveries]) == (
        "b",
        "timeout",
        [2],
    )
    assert time.time() >= sent + 0.5 - 0.01
    while not client.frees():  # the round ended: the slot passes on
        await client.next_publish()


async def test_a_full_only_take_asks_for_nothing_and_takes_only_full_rounds(
    setup: Setup,
) -> None:
    """The taker's read-ahead: no lease is taken for it (the slot stays
    free for a worker with room), and a round due by its timeout stays."""
    client, reader = setup.client, setup.reader
    assert reader.take(1, full_only=True) == []
    await asyncio.sleep(0)
    assert client.requests() == []
    reader.ready.append(TakenBatch("-", [], "timeout"))
    assert reader.take(1, full_only=True) == []
    reader.ready.appendleft(TakenBatch("-", [], "size"))
    assert [b.reason for b in reader.take(2, full_only=True)] == ["size"]
    assert [b.reason for b in reader.take(1)] == ["timeout"]


async def test_a_backlogs_burst_fills_a_round_already_past_its_deadline(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages sent long ago are due on arrival: while the request brings
    them in a burst, the round takes them all, not one each."""
    monkeypatch.setattr(nats_lease, "BURST_SECONDS", 60.0)  # a slow box's gaps
    client, reader = setup.client, setup.reader
    reader.take(1)
    await first_request(client)
    long_ago = time.time() - 60
    for sequence in (1, 2, 3):
        await client.message(sequence, long_ago)
        for _ in range(5):  # the reader's loop runs between two messages
            await asyncio.sleep(0)
    [full] = await setup.ready()
    assert (full.reason, [d.handle.sequence for d in full.deliveries]) == (
        "size",
        [1, 2, 3],
    )
