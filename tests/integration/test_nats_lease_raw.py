"""A lease reader takes a message without headers raw (no ``Msg`` built).

The plugin's producer publishes an unkeyed batched message with no
header (``nats_send.lease_headers``): the lease reader gets it as the
client parses it (``_compat.nats_subscribe_direct``), as today's path
does. A message with headers (a key, a moved one) still comes as a
``Msg``. Against the real NATS server (``NATS_URL``), on a stream of the
test's own, deleted afterwards.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

from taskiq_batching.transports.batch_source import TakenBatch
from taskiq_batching.transports.nats_lease import LeaseReader
from taskiq_batching.transports.nats_lease_keys import KEY_HEADER
from taskiq_batching.transports.nats_settle import ACK, publish_verdicts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[tuple[Client, str]]:
    """A client, and a work-queue stream with a ``max_waiting=1`` durable."""
    made = await nats.connect(nats_url)
    name = f"tb-raw-{uuid.uuid4().hex[:10]}"
    js = made.jetstream()
    await js.add_stream(
        name=name, subjects=[f"{name}.>"], retention=RetentionPolicy.WORK_QUEUE
    )
    config = ConsumerConfig(
        durable_name=name,
        ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=-1,
        max_waiting=1,
        filter_subject=f"{name}.t",
    )
    await js.add_consumer(name, config)
    yield made, name
    await js.delete_stream(name)
    await made.close()


async def test_a_message_without_headers_reaches_the_lease_raw(
    client: tuple[Client, str],
) -> None:
    nc, name = client
    js = nc.jetstream()
    await js.publish(f"{name}.t", b"bare")
    await js.publish(f"{name}.t", b"keyed", headers={KEY_HEADER: "k"})
    built: list[bytes] = []  # the data of each Msg the client builds
    build = nc._build_message

    def counted(*args: Any) -> Any:
        message = build(*args)
        built.append(message.data)
        return message

    nc._build_message = counted  # type: ignore[method-assign,assignment]
    woken = asyncio.Event()
    api = f"$JS.API.CONSUMER.MSG.NEXT.{name}.{name}"
    reader = LeaseReader(nc, api, name, 1, None, woken.set)
    await reader.start()
    taken: list[TakenBatch] = []
    try:
        while len(taken) < 2:  # one message per round (batch_size=1)
            woken.clear()
            found = reader.take(1)
            if not found:
                await asyncio.wait_for(woken.wait(), 10)
            taken += found
    finally:
        left = await reader.stop()
    assert left == []
    assert [(b.key, [d.data for d in b.deliveries]) for b in taken] == [
        ("-", [b"bare"]),
        ("k", [b"keyed"]),
    ]
    assert all(b.deliveries[0].sent_at for b in taken)  # the stream's time
    assert b"bare" not in built  # handed over raw
    assert b"keyed" in built  # headers: a Msg, as before
    handles = [b.deliveries[0].handle for b in taken]
    await publish_verdicts(nc, [h.reply for h in handles], ACK)
    info = await js.consumer_info(name, name)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
