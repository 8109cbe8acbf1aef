"""The NATS transport's pull consumer, on a fake client: requests, ends, acks.

The fake records what the transport publishes; messages and status
messages are handed to the subscription's callback by the test, so every
step is driven by the test (no server, no sleeps).
"""

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from taskiq_nats import PullBasedJetStreamBroker

from taskiq_batching import _compat
from taskiq_batching.transports import nats_pull
from taskiq_batching.transports.nats import NatsTransport
from taskiq_batching.transports.nats_pull import (
    Pull,
    stream_sequence,
    stream_timestamp,
)

pytestmark = pytest.mark.timeout(10)

NEXT = "$JS.API.CONSUMER.MSG.NEXT.s.d"


def ack_subject(sequence: int, delivered: int = 1) -> str:
    return f"$JS.ACK.s.d.{delivered}.{sequence}.{sequence}.1700000000000000000.0"


class Client:
    """What the transport uses of a nats-py client; records every publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []
        self.flushes = 0
        self.callback: Any = None
        self.unsubscribed = False
        #: Set by each pull request.
        self.asked = asyncio.Event()
        self.is_connected = True
        self.stats = {"reconnects": 0}

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.callback = cb

        async def unsubscribe() -> None:
            self.unsubscribed = True

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = ""
    ) -> None:
        self.published.append((subject, payload, reply))
        if subject == NEXT:
            self.asked.set()

    async def flush(self) -> None:
        self.flushes += 1

    def requests(self) -> list[bytes]:
        return [payload for subject, payload, _ in self.published if subject == NEXT]

    def verdicts(self) -> list[tuple[str, bytes]]:
        return [(s, p) for s, p, _ in self.published if s != NEXT]

    async def deliver(
        self, sequence: int, data: bytes = b"m", delivered: int = 1
    ) -> None:
        message = SimpleNamespace(
            headers=None, reply=ack_subject(sequence, delivered), data=data
        )
        await self.callback(message)

    async def status(self, code: str) -> None:
        await self.callback(
            SimpleNamespace(headers={"Status": code}, reply="", data=b"")
        )


def consumer(max_ack_pending: int = 1000, ack_pending: int = 0) -> Any:
    async def consumer_info() -> Any:
        config = SimpleNamespace(max_ack_pending=max_ack_pending, ack_wait=30.0)
        return SimpleNamespace(config=config, num_ack_pending=ack_pending)

    return SimpleNamespace(_nms=NEXT, consumer_info=consumer_info)


async def pull(client: Client, prefetch: int | None = None) -> Pull:
    reader = Pull(client, consumer(), prefetch)
    await reader.start()
    return reader


def transport(client: Client, max_ack_pending: int = 1000) -> NatsTransport:
    broker = PullBasedJetStreamBroker("nats://127.0.0.1:4222")
    broker.consumer = consumer(max_ack_pending)
    broker.client = client  # type: ignore[assignment,misc]
    return NatsTransport(broker)


def test_the_stream_sequence_is_read_from_either_ack_subject() -> None:
    v1 = "$JS.ACK.orders.workers.1.42.40.1700000000.3"
    assert stream_sequence(v1) == (42, 1)
    v2 = "$JS.ACK.hub.ACCHASH.orders.workers.2.43.41.1700000000.0.token"
    assert stream_sequence(v2) == (43, 2)
    assert stream_sequence(v2.rpartition(".")[0]) == (43, 2)  # no last token


def test_the_send_time_is_read_from_either_ack_subject() -> None:
    v1 = "$JS.ACK.orders.workers.1.42.40.1700000000123456789.3"
    assert stream_timestamp(v1) == pytest.approx(1700000000.123456789)
    v2 = "$JS.ACK.hub.ACCHASH.orders.workers.2.43.41.1700000000500000000.0.token"
    assert stream_timestamp(v2) == pytest.approx(1700000000.5)
    assert stream_timestamp(v2.rpartition(".")[0]) == pytest.approx(1700000000.5)
    assert stream_timestamp("$JS.ACK.too.short") is None


async def test_a_delivery_carries_the_time_the_stream_stored_it() -> None:
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    await client.deliver(1)
    assert [d.sent_at for d in reader.take(1)] == [1700000000.0]


async def test_one_request_at_a_time_within_the_limit_and_the_room() -> None:
    client = Client()
    reader = await pull(client, prefetch=150)
    await reader.request(500)
    await reader.request(500)  # one is in progress: nothing more
    assert client.requests() == [b'{"batch": 100, "expires": 1000000000}']
    for sequence in range(1, 101):
        await client.deliver(sequence)
    assert reader.requested == 0  # its last message ended it
    await reader.request(500)
    assert client.requests()[-1].startswith(b'{"batch": 50,')  # 150 - 100 held
    assert [d.handle.sequence for d in reader.take(3)] == [1, 2, 3]
    assert len(reader.unread) == 97


async def test_a_status_ends_a_request_but_a_heartbeat_does_not() -> None:
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    await client.deliver(1)
    reader.arrived.clear()
    await client.status("100")
    assert (reader.requested, reader.arrived.is_set()) == (9, False)
    await client.status("408")
    assert (reader.requested, reader.arrived.is_set()) == (0, True)
    await reader.request(10)
    assert len(client.requests()) == 2


async def test_a_request_that_never_ends_is_given_up() -> None:
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    await reader.request(10)
    assert len(client.requests()) == 1
    reader.given_up_at = asyncio.get_running_loop().time() - 0.1  # time passed
    await reader.request(10)
    assert len(client.requests()) == 2


async def test_a_held_message_redelivered_is_kept_once_and_acked_through_the_newest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    await client.deliver(7)
    [first] = reader.take(10)
    await client.deliver(7, delivered=2)
    assert not reader.unread
    assert first.handle.reply == ack_subject(7, delivered=2)
    assert "redelivered message 7" in caplog.text


async def test_no_request_beyond_max_ack_pending_and_a_settle_wakes_the_reader() -> (
    None
):
    client = Client()
    reader = await pull(client, prefetch=2)
    await reader.request(10)
    await client.deliver(1)
    await client.deliver(2)
    chunk = reader.take(10)
    reader.arrived.clear()
    await reader.request(10)
    assert len(client.requests()) == 1  # no room
    reader.unhold(chunk[0].handle)
    assert reader.arrived.is_set()  # the reader asks again
    await reader.request(10)
    assert client.requests()[-1].startswith(b'{"batch": 1,')


async def test_a_stop_waits_for_the_request_then_returns_the_unread() -> None:
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    await client.deliver(1)
    stopping = asyncio.ensure_future(reader.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # its messages would have no subscriber
    await client.deliver(2)
    await client.status("408")
    unread = await stopping
    assert [d.handle.sequence for d in unread] == [1, 2]
    assert client.unsubscribed
    await reader.request(10)
    assert len(client.requests()) == 1  # none once stopping


async def test_a_stop_gives_up_on_a_request_without_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nats_pull, "FETCH_TIMEOUT", 0.01)
    monkeypatch.setattr(nats_pull, "GRACE", 0.01)
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    assert await reader.stop() == []
    assert client.unsubscribed


async def test_a_read_asks_for_the_next_chunk_before_it_returns() -> None:
    client = Client()
    nats = transport(client)
    reading = asyncio.ensure_future(nats.read(5))
    await client.asked.wait()
    for sequence in range(1, 6):
        await client.deliver(sequence, data=str(sequence).encode())
    chunk = await reading
    assert [d.data for d in chunk] == [b"1", b"2", b"3", b"4", b"5"]
    assert len(client.requests()) == 2  # the next chunk is on its way
    assert nats.outstanding == 5
    await client.deliver(6)
    assert nats.outstanding == 5  # received, not read: not outstanding


async def test_an_idle_read_returns_nothing_when_its_request_expires() -> None:
    client = Client()
    nats = transport(client)
    reading = asyncio.ensure_future(nats.read(5))
    await client.asked.wait()
    await client.status("408")
    assert await reading == []


@pytest.mark.parametrize("ack_pending", [10, 5])
async def test_an_empty_read_while_the_consumer_is_full_makes_this_process_full(
    ack_pending: int,
) -> None:
    """Other processes hold the rest of max_ack_pending=10 (or do not)."""
    client = Client()
    nats = transport(client, max_ack_pending=10)
    nats.broker.consumer = consumer(10, ack_pending)
    reading = asyncio.ensure_future(nats.read(5))
    await client.asked.wait()
    for sequence in (1, 2):
        await client.deliver(sequence)
    assert len(await reading) == 2
    await client.status("408")  # the request read ahead ends empty
    client.asked.clear()
    reading = asyncio.ensure_future(nats.read(5))
    await client.asked.wait()
    await client.status("408")
    assert await reading == []
    # Full: what this process holds is all it gets (its buffers flush).
    assert nats.prefetch == (2 if ack_pending == 10 else 10)
    client.asked.clear()
    reading = asyncio.ensure_future(nats.read(5))
    await client.asked.wait()
    assert nats.prefetch == 10  # looked at before this read
    await client.status("408")
    assert await reading == []
    assert nats.prefetch == 10  # not asked again within the interval


async def test_acks_and_naks_are_publishes_then_one_flush() -> None:
    client = Client()
    nats = transport(client)
    reading = asyncio.ensure_future(nats.read(3))
    await client.asked.wait()
    for sequence in (1, 2, 3):
        await client.deliver(sequence)
    chunk = await reading
    await nats.ack([d.handle for d in chunk[:2]])
    await nats.release(chunk[2:])
    assert client.verdicts() == [
        (ack_subject(1), b"+ACK"),
        (ack_subject(2), b"+ACK"),
        (ack_subject(3), b"-NAK"),
    ]
    assert client.flushes == 2
    assert nats.outstanding == 0


async def test_acks_in_a_reconnection_are_logged_and_a_redelivery_acked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()
    nats = transport(client)
    reading = asyncio.ensure_future(nats.read(3))
    await client.asked.wait()
    for sequence in (1, 2, 3):
        await client.deliver(sequence)
    chunk = await reading
    with caplog.at_level(logging.WARNING, logger="taskiq_batching"):
        await nats.ack([chunk[0].handle])
        assert caplog.text == ""  # a round trip on one connection
        client.is_connected = False  # the server restarts
        await nats.ack([d.handle for d in chunk[1:]])
        client.is_connected = True
        assert "2 NATS ack(s) sent while the connection was lost" in caplog.text
        # The restarted server lost the acks of 1 and 2: it delivers them
        # again; a message never acked (4) and a first delivery are new.
        await client.deliver(1, delivered=2)
        await client.deliver(2, delivered=2)
        await client.deliver(4, delivered=2)
        await client.status("408")
        again = await nats.read(3)
        # Acked again by the read (not in the client's callback).
        assert client.verdicts()[-2:] == [
            (ack_subject(1, delivered=2), b"+ACK"),
            (ack_subject(2, delivered=2), b"+ACK"),
        ]
    assert [d.handle.sequence for d in again] == [4]
    assert "delivered again 2 message(s) this worker had acked" in caplog.text


async def test_a_settle_frees_room_and_only_acks_are_remembered() -> None:
    client = Client()
    nats = transport(client, max_ack_pending=3)
    reading = asyncio.ensure_future(nats.read(3))
    await client.asked.wait()
    for sequence in (1, 2, 3):
        await client.deliver(sequence)
    chunk = await reading
    assert nats.outstanding == 3
    pull = nats._pull
    assert pull is not None
    pull.arrived.clear()
    await nats.ack([d.handle for d in chunk[:2]])
    await nats.release(chunk[2:])
    assert nats.outstanding == 0
    assert pull.held == {}
    assert pull.arrived.is_set()  # room: the reader asks again
    # Delivered again: the acked ones are acked again, the nak'ed one is read.
    for sequence in (1, 2, 3):
        await client.deliver(sequence, delivered=2)
    await client.status("408")
    again = await nats.read(3)
    assert [d.handle.sequence for d in again] == [3]
    assert client.verdicts()[-2:] == [
        (ack_subject(1, delivered=2), b"+ACK"),
        (ack_subject(2, delivered=2), b"+ACK"),
    ]


async def test_close_naks_what_was_received_but_never_read() -> None:
    client = Client()
    nats = transport(client)
    reading = asyncio.ensure_future(nats.read(2))
    await client.asked.wait()
    for sequence in (1, 2):
        await client.deliver(sequence)
    chunk = await reading
    await client.deliver(3)  # the chunk read ahead
    await client.status("408")
    await nats.ack([d.handle for d in chunk])
    await nats.close()
    assert client.verdicts()[-1] == (ack_subject(3), b"-NAK")
    assert client.unsubscribed
    await nats.close()  # once
    assert client.verdicts()[-1] == (ack_subject(3), b"-NAK")


async def test_compat_hands_many_publishes_to_the_client_at_once() -> None:
    sent: list[bytes] = []

    async def send_command(command: bytes) -> None:
        sent.append(command)

    client = SimpleNamespace(
        _send_command=send_command,
        is_connected=True,
        stats={"out_msgs": 0, "out_bytes": 0},
    )
    assert await _compat.nats_publish_each(client, ["a.1", "a.2"], b"+ACK")
    assert sent == [b"PUB a.1 4\r\n+ACK\r\nPUB a.2 4\r\n+ACK\r\n"]
    assert client.stats == {"out_msgs": 2, "out_bytes": 8}
    payload = "é".encode()  # not ASCII: each command built as bytes
    assert await _compat.nats_publish_each(client, ["a.é"], payload)
    assert sent[-1] == "PUB a.é 2\r\né\r\n".encode()
    del sent[-1]
    client.stats = {"out_msgs": 0, "out_bytes": 0}
    assert not await _compat.nats_publish_each(client, [], b"+ACK")
    client.is_connected = False  # publish buffers or refuses: its own rules
    assert not await _compat.nats_publish_each(client, ["a.3"], b"+ACK")
    assert not await _compat.nats_publish_each(Client(), ["a.3"], b"+ACK")
    assert len(sent) == 1


async def test_a_raw_message_is_taken_with_its_reply_subject_as_bytes() -> None:
    # The raw handle (no ``Msg`` built) gives the reply subject as parsed.
    client = Client()
    reader = await pull(client)
    await reader.request(10)
    reader._take(ack_subject(7).encode(), b"raw")
    (delivery,) = reader.take(10)
    assert delivery.data == b"raw"
    assert delivery.handle.reply == ack_subject(7)
    assert delivery.handle.sequence == 7
    assert reader.arrived.is_set()


async def test_a_stop_returns_at_the_last_message_of_the_request_with_some_unread() -> (
    None
):
    # Arrivals behind unread ones leave the event as it is, but the one that
    # ends the request wakes a stop waiting for it (no status comes then).
    client = Client()
    reader = await pull(client)
    await reader.request(2)
    await client.deliver(1)
    stopping = asyncio.ensure_future(reader.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    await client.deliver(2)
    unread = await asyncio.wait_for(stopping, 1)
    assert [d.handle.sequence for d in unread] == [1, 2]
