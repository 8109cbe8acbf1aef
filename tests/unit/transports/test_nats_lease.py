"""The NATS lease reader (``wait_in_broker``) on a fake client: its requests.

The fake records every publish; messages, statuses and the ``free`` word
are handed to the subscriptions' callbacks by the test, and each step
waits for the reader's next publish (no server, no sleeps).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from taskiq_batching.transports.base import Delivery
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

    async def message(self, sequence: int, sent_at: float, delivered: int = 1) -> None:
        reply = f"$JS.ACK.s-batch.d-b-x.{delivered}.{sequence}.{sequence}.1.0"
        msg = SimpleNamespace(
            subject="t.batch.x",
            reply=reply,
            data=b"m",
            headers={SENT_AT: repr(sent_at)},
        )
        await self.callbacks["_INBOX.t.*"](msg)

    async def status(self, code: str, serial: int) -> None:
        msg = SimpleNamespace(
            subject=f"_INBOX.t.{serial}", reply="", data=b"", headers={"Status": code}
        )
        await self.callbacks["_INBOX.t.*"](msg)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Client, LeaseReader, list[Delivery]]]:
    client = Client()
    got: list[Delivery] = []
    reader = LeaseReader(client, API, "d-b-x", 3, 0.5, got.append)
    await reader.start()
    yield client, reader, got
    await reader.stop()


async def first_request(client: Client) -> None:
    while not client.requests():
        await client.next_publish()


async def test_a_round_asks_for_what_completes_it_until_its_deadline(
    setup: tuple[Client, LeaseReader, list[Delivery]],
) -> None:
    client, _, got = setup
    await first_request(client)
    assert client.requests() == [{"batch": 3, "expires": int(IDLE_EXPIRES * 1e9)}]
    sent = time.time()
    await client.message(1, sent)
    assert [d.sent_at for d in got] == [sent]  # the original send, moved along
    await client.status("408", 1)  # the idle request ended
    await client.next_publish()
    second = client.requests()[-1]
    assert second["batch"] == 2
    assert 0 < second["expires"] <= 0.5e9  # the first message's deadline


async def test_a_full_round_lets_the_slot_go_and_asks_again_once_settled(
    setup: tuple[Client, LeaseReader, list[Delivery]],
) -> None:
    client, reader, got = setup
    await first_request(client)
    for sequence in (1, 2, 3):
        await client.message(sequence, time.time())
    await client.next_publish()
    assert (client.frees(), len(client.requests())) == (1, 1)
    reader.unhold(got[0].handle)
    reader.unhold(got[1].handle)
    reader.unhold(got[2].handle)  # its batch ran: the next round may start
    await client.next_publish()
    assert client.requests()[-1] == {"batch": 3, "expires": int(IDLE_EXPIRES * 1e9)}


async def test_a_refused_request_waits_for_the_free_word(
    setup: tuple[Client, LeaseReader, list[Delivery]],
) -> None:
    client, _, _ = setup
    await first_request(client)
    await client.status("409", 1)
    await asyncio.sleep(0)  # the reader takes the refusal (it asks nothing)
    assert len(client.requests()) == 1
    await client.callbacks[FREE](SimpleNamespace(data=b""))
    await client.next_publish()
    assert len(client.requests()) == 2


async def test_a_message_delivered_again_while_held_is_not_delivered_twice(
    setup: tuple[Client, LeaseReader, list[Delivery]],
) -> None:
    client, _, got = setup
    await first_request(client)
    await client.message(1, time.time())
    await client.message(1, time.time(), delivered=2)
    assert len(got) == 1
    assert got[0].handle.reply.startswith("$JS.ACK.s-batch.d-b-x.2.")
