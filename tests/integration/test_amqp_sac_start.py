"""RabbitMQ, ``wait_in_broker=True``: workers that start at once all consume.

Several ``AmqpBatches`` (one per worker, each with its own connection to
the real RabbitMQ) start together on a task queue nobody has declared
yet: their connections are made first and released at once, so their
``queue.declare`` and ``basic.consume`` race the queue's creation, as
workers started together do. RabbitMQ closes a connection whose consume
comes before the new quorum queue's member runs (541 INTERNAL_ERROR,
``amqp_task_consumers.py``); every consumer must end on the server
(``rabbitmqctl list_consumers``) and its connection open. 20 rounds, a
new queue each: 0 to 9 of the 48 consumes of 12 rounds met the race in
five runs; with the retry off (``RETRY_DELAYS = ()``) the test failed in 8
runs of 8 (a run that meets no race passes either way: not certain).
"""

import asyncio
import subprocess
from collections.abc import Sequence
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from taskiq_aio_pika import AioPikaBroker, Queue

from taskiq_batching.core.analysis import analyse
from taskiq_batching.settings import BatchSettings
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.amqp_batches import AmqpBatches
from taskiq_batching.transports.amqp_queues import batch_queue_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Workers starting at once, and rounds (a new task queue each).
WORKERS = 4
ROUNDS = 20


@pytest.fixture
def queue_prefix() -> str:
    return "tb-amqp-sac-start"


@pytest.fixture
def extra_queues(queue: str) -> list[str]:
    return [batch_queue_name(f"{queue}-{n}", "collect") for n in range(ROUNDS)]


async def collect(items: list[int]) -> None: ...


async def _ack(handles: Any) -> None:
    raise AssertionError("nothing is acked here")


class Consumers:
    """The transport's side: the consumers started and not forgotten, by queue."""

    def __init__(self) -> None:
        self.live: dict[str, set[str]] = {}
        self.forgotten = 0
        self.connections = 0

    async def consume(self, channel: Any, queue: Any, tag: str) -> None:
        async def on_message(message: Any) -> None:
            raise AssertionError("nothing is sent here")

        await queue.consume(on_message, consumer_tag=tag)
        self.live.setdefault(queue.name, set()).add(tag)

    def forget(self, tags: Sequence[str]) -> None:
        self.forgotten += len(tags)
        for live in self.live.values():
            live.difference_update(tags)


async def on_server() -> dict[str, set[str]]:
    """The server's consumers (active or waiting), by queue."""
    listed = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "list_consumers", "queue_name", "consumer_tag"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    consumers: dict[str, set[str]] = {}
    for line in listed.stdout.splitlines()[1:]:
        queue, tag = line.split("\t")[:2]
        consumers.setdefault(queue, set()).add(tag)
    return consumers


async def start_together(
    rabbitmq_url: str, queue: str, consumers: Consumers
) -> list[AmqpBatches]:
    """``WORKERS`` task consumers of ``queue``'s task, started at once."""
    # Not asyncio.Barrier: Python 3.10 has none.
    connected = asyncio.Event()
    arrived: list[int] = []
    settings = BatchSettings(batch_size=10, batch_timeout=1.0)
    spec = BatchSpec("collect", settings, analyse("collect", collect), None)
    workers = []
    for _ in range(WORKERS):
        broker = AioPikaBroker(rabbitmq_url, task_queues=[Queue(name=queue)])
        tries: list[int] = []

        async def connect(tries: list[int] = tries) -> Any:
            connection = await aio_pika.connect_robust(rabbitmq_url)
            tries.append(1)
            consumers.connections += 1
            if len(tries) == 1:  # the first try of each starts together
                arrived.append(1)
                if len(arrived) == WORKERS:
                    connected.set()
                await connected.wait()
            return connection

        batches = AmqpBatches(broker, _ack, connect)
        batches.configure([spec])
        workers.append(batches)
    started = await asyncio.gather(
        *(w.start(consumers.consume, consumers.forget) for w in workers),
        return_exceptions=True,
    )
    errors = [e for e in started if isinstance(e, BaseException)]
    if errors:
        await asyncio.gather(*(w.close() for w in workers))
        raise errors[0]
    return workers


async def test_workers_started_at_once_all_consume_their_task_queue(
    rabbitmq_url: str, queue: str, channel: AbstractChannel
) -> None:
    consumers = Consumers()
    workers: list[AmqpBatches] = []
    try:
        for n in range(ROUNDS):
            workers += await start_together(rabbitmq_url, f"{queue}-{n}", consumers)
        server = await on_server()
        for n in range(ROUNDS):
            name = batch_queue_name(f"{queue}-{n}", "collect")
            # Every worker's consumer is there (one active, the others wait).
            assert len(consumers.live[name]) == WORKERS
            assert server.get(name) == consumers.live[name]
        assert all(not w.consumers.connection.is_closed for w in workers)
    finally:
        await asyncio.gather(*(w.close() for w in workers))
    retries = consumers.connections - ROUNDS * WORKERS
    print(f"\n{retries} consume(s) of {ROUNDS * WORKERS} met the race")
