"""Moving a plain producer's messages on NATS (``nats_move``, ``nats_forward.Moves``).

A fake client records the publishes; the test hands the stream's answers
to the subscription's callback itself, so each step is explicit (no
server, no sleeps).
"""

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.nats_forward import Moves
from taskiq_batching.transports.nats_move import Move, Moved, Mover, refusal
from taskiq_batching.transports.nats_pull import SENT_AT, Unsettled

pytestmark = pytest.mark.timeout(10)

STORED = b'{"stream":"s-batch","seq":7}'
FULL = (
    b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
)


class Client:
    """What the mover uses of a nats-py client; records every publish."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.published: list[tuple[str, bytes, str, Any]] = []
        self.callback: Any = None
        self.fail_at = fail_at

    def new_inbox(self) -> str:
        return "_INBOX.m"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        assert subject == "_INBOX.m.*"
        self.callback = cb

        async def unsubscribe() -> None:
            pass

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: Any = None
    ) -> None:
        if self.fail_at is not None and len(self.published) == self.fail_at:
            raise ConnectionError("closed")
        self.published.append((subject, payload, reply, headers))

    async def answer(self, at: int, data: bytes = STORED, headers: Any = None) -> None:
        """The stream's answer to the ``at``-th publish (0-based)."""
        reply = self.published[at][2]
        await self.callback(SimpleNamespace(subject=reply, data=data, headers=headers))


def delivery(sequence: int, sent_at: float | None = 1.5) -> Delivery:
    handle = Unsettled(f"$JS.ACK.s.s.1.{sequence}.1.1700000000000000000.0", sequence)
    return Delivery(b'{"task_name":"t"}', handle, sent_at=sent_at)


def moves(*deliveries: Delivery) -> list[Move]:
    return [(d, "s.tasks.batch.x", d.data, {}) for d in deliveries]


class Settled:
    """``on_moved``: records each chunk; ``block`` holds the next one."""

    def __init__(self) -> None:
        self.chunks: list[Moved] = []
        self.arrived = asyncio.Event()
        self.block: asyncio.Event | None = None

    async def __call__(self, chunk: Moved) -> None:
        if self.block is not None:
            await self.block.wait()
        self.chunks.append(chunk)
        self.arrived.set()

    async def next(self) -> Moved:
        await self.arrived.wait()
        self.arrived.clear()
        return self.chunks[-1]


async def test_publish_returns_at_once_and_the_chunk_settles_once_answered() -> None:
    client, settled = Client(), Settled()
    mover = Mover(client, settled)
    first, second, third = delivery(1), delivery(2), delivery(3)
    await mover.publish(moves(first, second, third))
    assert len(client.published) == 3  # all sent, none answered yet
    await client.answer(2)
    await client.answer(0)
    assert settled.chunks == []
    await client.answer(1)
    chunk = await settled.next()
    assert chunk.stored == [third, first, second]
    assert (chunk.refused, chunk.unknown) == ([], [])


async def test_a_refusal_is_told_apart_from_a_store_within_one_chunk() -> None:
    client, settled = Client(), Settled()
    mover = Mover(client, settled)
    first, second = delivery(1), delivery(2)
    await mover.publish(moves(first, second))
    await client.answer(0)
    await client.answer(1, FULL)
    chunk = await settled.next()
    assert (chunk.stored, chunk.refused) == ([first], [second])
    assert chunk.why == "maximum messages exceeded"


async def test_chunks_settle_apart_whatever_the_order_of_answers() -> None:
    client, settled = Client(), Settled()
    mover = Mover(client, settled)
    first, second = delivery(1), delivery(2)
    await mover.publish(moves(first))
    await mover.publish(moves(second))
    await client.answer(1)
    assert (await settled.next()).stored == [second]
    await client.answer(0)
    assert (await settled.next()).stored == [first]


async def test_a_publish_the_client_refuses_leaves_the_rest_unknown() -> None:
    client, settled = Client(fail_at=1), Settled()
    mover = Mover(client, settled)
    first, second, third = delivery(1), delivery(2), delivery(3)
    await mover.publish(moves(first, second, third))  # nothing raised
    await client.answer(0)
    chunk = await settled.next()
    assert (chunk.stored, chunk.unknown) == ([first], [second, third])
    assert "closed" in chunk.why


async def test_unanswered_moves_are_unknown_at_the_timeout_late_answers_ignored() -> (
    None
):
    client, settled = Client(), Settled()
    mover = Mover(client, settled, timeout_seconds=0.05)
    first, second = delivery(1), delivery(2)
    await mover.publish(moves(first, second))
    await client.answer(0)
    chunk = await settled.next()  # by the chunk's timer
    assert (chunk.stored, chunk.unknown) == ([first], [second])
    assert "no answer" in chunk.why
    await client.answer(1)
    assert len(settled.chunks) == 1


async def test_stop_waits_for_the_chunks_in_flight_and_their_settling() -> None:
    client, settled = Client(), Settled()
    settled.block = asyncio.Event()
    mover = Mover(client, settled)
    await mover.publish(moves(delivery(1)))
    stopping = asyncio.ensure_future(mover.stop())
    for _ in range(5):
        await asyncio.sleep(0)  # let stop run: it must wait for the answer
    assert not stopping.done()
    await client.answer(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not stopping.done()  # answered, still settling
    settled.block.set()
    await stopping
    assert len(settled.chunks) == 1


@pytest.mark.parametrize(
    ("headers", "data", "why"),
    [
        (None, STORED, None),
        (None, b'{"stream":"s","seq":3,"duplicate":true}', None),
        (None, b'{"stream":"error","seq":1}', None),
        (None, FULL, "maximum messages exceeded"),
        (None, b'{"error":{"code":500}}', "{'code': 500}"),
        ({"Status": "503"}, b"", "no stream listens on the batched task's subject"),
        (None, b'"error" but not JSON', "unreadable answer"),
    ],
)
def test_refusal_reads_the_streams_answer(
    headers: Any, data: bytes, why: str | None
) -> None:
    found = refusal(headers, data)
    if why is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(why)


class Settle:
    """An ack or nak of the transport: records what it got, may fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.got: list[Any] = []
        self.error = error

    async def __call__(self, items: Sequence[Any]) -> None:
        self.got += items
        if self.error is not None:
            raise self.error


def make_moves(ack: Settle, nak: Settle, back: list[Delivery]) -> Moves:
    broker = SimpleNamespace(stream_name="s", subject="s.tasks", client=None)
    return Moves(broker, ack, nak, back.extend)


async def test_moves_ack_the_stored_nak_the_unknown_and_give_back_the_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ack, nak = Settle(), Settle()
    back: list[Delivery] = []
    forwarder = make_moves(ack, nak, back)
    stored, refused, unknown = delivery(1), delivery(2), delivery(3)
    chunk = Moved(0)
    chunk.stored, chunk.refused, chunk.unknown = [stored], [refused], [unknown]
    chunk.why = "maximum messages exceeded"
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        await forwarder._moved(chunk)
    assert ack.got == [stored.handle]
    assert nak.got == [unknown]
    assert back == [refused]
    assert "1 refused: this worker batches them" in caplog.text
    # The refused one, read again, is batched here: once.
    assert forwarder.waited(refused) is True
    assert forwarder.waited(refused) is False
    assert forwarder.waited(stored) is False


async def test_a_failed_ack_of_moved_originals_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forwarder = make_moves(Settle(ConnectionError("gone")), Settle(), [])
    chunk = Moved(0)
    chunk.stored = [delivery(1)]
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        await forwarder._moved(chunk)
    assert "cannot ack 1 NATS message(s) after moving them" in caplog.text


def test_a_move_carries_the_originals_sequence_send_time_deadline_and_key() -> None:
    forwarder = make_moves(Settle(), Settle(), [])
    forwarder.broker.formatter = SimpleNamespace(
        loads=lambda data: SimpleNamespace(labels={"batch_deadline": 1700000000.25})
    )
    original = Delivery(
        b'{"labels":{"batch_deadline":1}}', Unsettled("r", 42), sent_at=1.5
    )
    moved, subject, data, headers = forwarder._move("t", original, "k1")
    assert (moved, data) == (original, original.data)
    assert subject.startswith("s.tasks.batch.")
    assert headers["Nats-Msg-Id"] == "s-42"
    assert float(headers[SENT_AT]) == 1.5
    assert float(headers["batch_deadline"]) == 1700000000.25
    assert headers["Tb-Key"] == "k1"  # the lease keeps keys apart by it
