"""A producer's batched messages, published straight to their task's subject (NATS).

``BatchingMiddleware(wait_in_broker=True)`` on taskiq-nats's pull broker:
``kiq`` and ``kiq_many`` of a batched task publish to
``<subject>.batch.<token>`` (stream ``<stream>-batch``), so that no worker
has to move them there; plain tasks still go to the main subject. Against
the real NATS server (``NATS_URL``); each test has streams of its own,
deleted afterwards. No worker runs here.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy
from nats.js.errors import NotFoundError
from taskiq import BrokerMessage
from taskiq.brokers.inmemory_broker import InmemoryResultBackend
from taskiq_nats import PullBasedJetStreamBroker

from taskiq_batching import BatchingMiddleware, SendManyError, batch_task
from taskiq_batching.labels import BATCH_DEADLINE_LABEL
from taskiq_batching.transports.nats_lease_keys import KEY_HEADER
from taskiq_batching.transports.nats_send import batch_stream, batch_subject
from taskiq_batching.waiting import waiting_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def producer(nats_url: str) -> AsyncIterator[PullBasedJetStreamBroker]:
    """A started producer that waits in the broker; its streams deleted after."""
    name = f"tb-send-{uuid.uuid4().hex[:10]}"
    broker = PullBasedJetStreamBroker(
        nats_url, subject=f"{name}.tasks", stream_name=name, durable=name
    )
    broker.with_result_backend(InmemoryResultBackend(max_stored_results=-1))
    broker.add_middlewares(BatchingMiddleware(wait_in_broker=True))
    await broker.startup()
    yield broker
    await broker.shutdown()
    client = await nats.connect(nats_url)
    try:
        for stream in (name, batch_stream(broker)):
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


def declare(broker: PullBasedJetStreamBroker) -> tuple[Any, Any]:
    """A batched task ``collect`` and a plain task ``plain``."""

    @batch_task(broker, task_name="collect", batch_size=10, batch_timeout=1.0)
    async def collect(items: list[int]) -> list[int]:
        return items

    @broker.task(task_name="plain")
    async def plain(item: int) -> int:
        return item

    return collect, plain


async def stored(broker: PullBasedJetStreamBroker, stream: str) -> list[Any]:
    """Every message of a stream (its subject, headers and data), in order."""
    js = broker.js
    info = await js.stream_info(stream)
    last = info.state.last_seq
    return [await js.get_msg(stream, seq) for seq in range(1, last + 1)]


async def test_kiq_and_kiq_many_publish_to_the_tasks_subject(
    producer: PullBasedJetStreamBroker,
) -> None:
    """Batched: on the task's subject (no worker moves them); plain: as ever."""
    collect, plain = declare(producer)
    one = await collect.kiq(0)
    many = await collect.kiq_many(range(1, 6))
    await plain.kiq(7)

    on_main = await stored(producer, producer.stream_name)
    assert [producer.formatter.loads(m.data).task_name for m in on_main] == ["plain"]
    waiting = await stored(producer, batch_stream(producer))
    assert {m.subject for m in waiting} == {batch_subject(producer, "collect")}
    messages = [producer.formatter.loads(m.data) for m in waiting]
    assert [m.task_id for m in messages] == [one.task_id] + [t.task_id for t in many]
    assert [m.args[0] for m in messages] == list(range(6))
    # kiq_many's are sent at most once (the server's duplicate window).
    # Only what the lease reads travels as a header: kiq's message has none
    # (it reaches the lease raw); kiq_many's only their Nats-Msg-Id.
    assert waiting[0].headers is None
    assert [m.headers for m in waiting[1:]] == [
        {"Nats-Msg-Id": f"tb-{t.task_id}"} for t in many
    ]


async def test_a_key_and_a_batch_deadline_are_the_only_headers_sent(
    producer: PullBasedJetStreamBroker,
) -> None:
    """A lease reads a key (``Tb-Key``) and ``batch_deadline``; no labels."""

    @batch_task(
        producer,
        task_name="keyed",
        batch_size=10,
        batch_timeout=1.0,
        batch_key=lambda item: item % 2,
    )
    async def keyed(items: list[int]) -> list[int]:
        return items

    collect, _ = declare(producer)
    await keyed.kicker().with_labels(colour="blue").kiq(1)
    await collect.kicker().with_labels(colour="blue", batch_deadline=12.5).kiq(2)
    first, second = await stored(producer, batch_stream(producer))
    assert set(first.headers) == {KEY_HEADER}
    assert second.headers == {BATCH_DEADLINE_LABEL: "12.5"}
    assert producer.formatter.loads(second.data).labels["colour"] == "blue"


async def test_a_chunk_sent_again_is_stored_once(
    producer: PullBasedJetStreamBroker,
) -> None:
    """``once`` (``kiq_many``): a retry within the duplicate window adds nothing."""
    collect, _ = declare(producer)
    source = waiting_sender(producer, collect.task.batch_spec)
    assert source is not None
    messages = [
        BrokerMessage(task_id=f"t{i}", task_name="collect", message=b"{}", labels={})
        for i in range(5)
    ]
    await source.send(collect.task.batch_spec, messages, ["-"] * 5, once=True)
    await source.send(collect.task.batch_spec, messages, ["-"] * 5, once=True)
    assert len(await stored(producer, batch_stream(producer))) == 5


async def test_messages_the_stream_refuses_are_reported_not_sent(
    producer: PullBasedJetStreamBroker,
) -> None:
    """A batch stream full (max 3, new ones refused): the last 2 were not sent."""
    collect, _ = declare(producer)
    await producer.js.add_stream(
        name=batch_stream(producer),
        subjects=[f"{producer.subject}.batch.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        max_msgs=3,
        discard=DiscardPolicy.NEW,
    )
    with pytest.raises(SendManyError) as raised:
        await collect.kiq_many(range(5))
    error = raised.value
    assert (error.sent, error.not_sent, error.unknown) == ([0, 1, 2], [3, 4], [])


async def test_a_task_each_worker_buffers_is_sent_the_plain_way(
    producer: PullBasedJetStreamBroker,
) -> None:
    """``batch_min_size`` is about one worker's buffer: not waiting in the broker."""

    @batch_task(
        producer,
        task_name="patient",
        batch_size=10,
        batch_timeout=1,
        batch_min_size=5,
        batch_max_wait=2,
    )
    async def patient(items: list[int]) -> list[int]:
        return items

    await patient.kiq(1)
    on_main = await stored(producer, producer.stream_name)
    assert [producer.formatter.loads(m.data).task_name for m in on_main] == ["patient"]
