"""``_compat``'s touches of aiormq and nats-py, against the installed versions.

Each private part the AMQP and NATS transports rely on is checked here on
the real servers, so that a release of those libraries that moves it
fails this test, not a worker in production.
"""

import asyncio
import uuid
from typing import Any

import aiormq
import nats
import pytest
from nats.aio.msg import Msg

from taskiq_batching import _compat

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_amqp_tap_frames_sees_each_frame_of_a_channel_once(
    rabbitmq_url: str,
) -> None:
    connection = await aiormq.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        queue = f"tb-compat-{uuid.uuid4().hex[:8]}"
        await channel.queue_declare(queue, auto_delete=True)
        seen: list[object] = []
        arrived = asyncio.Event()

        def take(frame: object) -> bool:
            seen.append(frame)
            arrived.set()
            return False  # leave it to the channel

        assert _compat.amqp_tap_frames(channel, take)
        assert not _compat.amqp_tap_frames(channel, take)  # once per channel
        await channel.basic_publish(b"x", routing_key=queue)
        got = await channel.basic_get(queue, no_ack=True)
        assert got.body == b"x"
        await asyncio.wait_for(arrived.wait(), 10)
        assert seen
        # auto_delete removes a queue only after a consumer left it.
        await channel.queue_delete(queue)
    finally:
        await connection.close()


async def test_nats_pull_subject_and_publish_each(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    stream = f"tbcompat{uuid.uuid4().hex[:8]}"
    try:
        js = client.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        pull = await js.pull_subscribe(f"{stream}.x", durable=stream)
        subject = _compat.nats_pull_subject(pull)
        assert subject.endswith(f"CONSUMER.MSG.NEXT.{stream}.{stream}")
        received: list[str] = []
        done = asyncio.Event()

        async def on_message(message: Msg) -> None:
            received.append(message.subject)
            if len(received) == 3:
                done.set()

        await client.subscribe(f"{stream}-acks.*", cb=on_message)
        await client.flush()
        subjects = [f"{stream}-acks.{n}" for n in range(3)]
        assert await _compat.nats_publish_each(client, subjects, b"+ACK")
        await client.flush()
        await asyncio.wait_for(done.wait(), 10)
        assert sorted(received) == subjects
    finally:
        await client.jetstream().delete_stream(stream)
        await client.close()


async def test_nats_subscribe_direct_hands_each_message_over_as_it_is_parsed(
    nats_url: str,
) -> None:
    client = await nats.connect(nats_url)
    try:
        subject = f"tbcompat-direct-{uuid.uuid4().hex[:8]}"
        received: list[bytes] = []
        done = asyncio.Event()

        def handle(message: Msg) -> None:
            received.append(message.data)
            if len(received) == 3:
                done.set()

        sub = await _compat.nats_subscribe_direct(client, subject, handle)
        # No queue, no task of the subscription's own: the client's reader
        # calls ``handle`` (a callback subscription would have both).
        task = sub._wait_for_msgs_task
        assert task is not None
        await asyncio.wait({task}, timeout=10)  # cancelled: it ends
        assert task.cancelled()
        for n in range(3):
            await client.publish(subject, b"%d" % n)
        await client.flush()
        await asyncio.wait_for(done.wait(), 10)
        assert received == [b"0", b"1", b"2"]
        assert sub.pending_msgs == 0
        assert sub._pending_size == 0
        await sub.unsubscribe()
        # A second subscription on the same connection is the barrier: the
        # server delivers to it in order, after what it would send ``sub``.
        barrier = await client.subscribe(subject)
        await client.publish(subject, b"late")
        assert (await barrier.next_msg(timeout=10)).data == b"late"
        assert received == [b"0", b"1", b"2"]
    finally:
        await client.close()


async def test_nats_subscribe_direct_survives_a_failing_handle(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    try:
        subject = f"tbcompat-direct-{uuid.uuid4().hex[:8]}"
        received: list[bytes] = []
        done = asyncio.Event()

        def handle(message: Msg) -> None:
            if message.data == b"bad":
                raise ValueError("bad")
            received.append(message.data)
            done.set()

        await _compat.nats_subscribe_direct(client, subject, handle)
        await client.publish(subject, b"bad")
        await client.publish(subject, b"good")
        await client.flush()
        await asyncio.wait_for(done.wait(), 10)
        assert received == [b"good"]
        assert client.is_connected
    finally:
        await client.close()


async def test_nats_subscribe_direct_hands_messages_without_headers_over_raw(
    nats_url: str,
) -> None:
    client = await nats.connect(nats_url)
    built: list[Msg] = []

    class Counted(Msg):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    client.msg_class = Counted
    try:
        subject = f"tbcompat-bare-{uuid.uuid4().hex[:8]}"
        bare: list[tuple[bytes, bytes]] = []
        parsed: list[Msg] = []
        done = asyncio.Event()

        def handle(message: Msg) -> None:
            parsed.append(message)
            done.set()

        def handle_bare(reply: bytes, data: bytes) -> None:
            bare.append((reply, data))

        sub = await _compat.nats_subscribe_direct(client, subject, handle, handle_bare)
        other = await client.subscribe(subject)  # the same client, served as ever
        await client.publish(subject, b"raw", reply="the.reply")
        await client.publish(subject, b"with", headers={"Tb": "1"})
        await client.flush()
        await asyncio.wait_for(done.wait(), 10)
        # No Msg built for the raw one: only for the other subscription's
        # two messages and the one with headers.
        assert bare == [(b"the.reply", b"raw")]
        assert [(m.data, m.headers) for m in parsed] == [(b"with", {"Tb": "1"})]
        assert (await other.next_msg(timeout=10)).data == b"raw"
        assert (await other.next_msg(timeout=10)).data == b"with"
        assert len(built) == 3
        assert sub._received == 2
        assert client.stats["in_msgs"] == 4
        await sub.unsubscribe()
        await client.publish(subject, b"late")
        assert (await other.next_msg(timeout=10)).data == b"late"
        assert bare == [(b"the.reply", b"raw")]
        # A later direct subscription drops what the gone one left behind.
        again = await _compat.nats_subscribe_direct(
            client, subject, handle, handle_bare
        )
        bare_of: Any = client._process_msg
        assert list(bare_of.handles) == [again._id]
    finally:
        await client.close()
