"""A pre-loaded drain through ``redis_batches`` against today's read, one process.

    python -m bench.stream_batches --messages 20000 --batch-size 100 --rounds 3
    python -m bench.stream_batches --broker list ...   (``redis_list_batches``)

Each round pre-loads the same number of messages on the main stream (sent
the plain way) and on a batched task's key stream (sent with the plugin,
``kiq_many``'s marked chunks), then drains each with one source, acking
each batch as a worker does: ``StreamTransport.read(batch_size)`` for
today's path, ``StreamBatches.take(spec, 1)`` for waiting in the broker.
With ``--broker list``, the same on a list broker: ``ListTransport.read``
against ``ListBatches.take`` (nothing to ack). Rounds alternate, so both
see the same machine; it prints messages per second of each and their
ratio. Needs Redis (``REDIS_URL``).
"""

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

from taskiq import BrokerMessage
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from bench.measure import delete_prefix
from taskiq_batching import BatchingMiddleware, batch_task
from taskiq_batching.spec import BatchSpec
from taskiq_batching.transports.redis_list import ListTransport
from taskiq_batching.transports.redis_sender import ListSender, StreamSender
from taskiq_batching.transports.redis_stream import StreamTransport


def _broker(url: str, queue: str, kind: str) -> Any:
    broker: Any
    if kind == "list":
        broker = ListQueueBroker(url, queue_name=queue)
    else:
        broker = RedisStreamBroker(
            url, queue_name=queue, consumer_name=f"c-{uuid.uuid4().hex[:8]}"
        )
    broker.add_middlewares(BatchingMiddleware())
    return broker


def _spec(broker: Any, batch_size: int) -> BatchSpec:
    async def collect(items: list[int]) -> int:
        return len(items)

    task = batch_task(
        broker, task_name="collect", batch_size=batch_size, batch_timeout=60
    )(collect)
    spec = getattr(task.task, "batch_spec", None)
    assert isinstance(spec, BatchSpec)
    return spec


def _messages(count: int) -> list[BrokerMessage]:
    body = b'{"task_id":"%d","task_name":"collect","args":[1],"kwargs":{},"labels":{}}'
    return [
        BrokerMessage(task_id=str(i), task_name="collect", message=body % i, labels={})
        for i in range(count)
    ]


async def _drain_read(transport: Any, count: int, size: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < count:
        got = await transport.read(size)
        await transport.ack([d.handle for d in got])
        done += len(got)
    return count / (time.perf_counter() - started)


async def _drain_take(transport: Any, spec: BatchSpec, count: int) -> float:
    batches = transport.batches
    assert batches is not None
    started = time.perf_counter()
    done = 0
    while done < count:
        taken = await batches.take(spec, 1)
        for batch in taken.batches:
            await transport.ack([d.handle for d in batch.deliveries])
            done += len(batch.deliveries)
    return count / (time.perf_counter() - started)


async def _round(url: str, count: int, size: int, kind: str) -> tuple[float, float]:
    queue = f"bench-sb-{uuid.uuid4().hex[:8]}"
    broker = _broker(url, queue, kind)
    spec = _spec(broker, size)
    transport: Any
    sender: Any
    if kind == "list":
        transport = ListTransport(broker, wait_in_broker=True)
        sender = ListSender(broker)
    else:
        transport = StreamTransport(broker, wait_in_broker=True)
        sender = StreamSender(broker)
        await transport.read(1)  # the main stream's group, before sending
    batches = transport.batches
    assert batches is not None
    redis: Any = transport.client.redis
    try:
        messages = _messages(count)
        await sender.send(messages)
        await batches.send(spec, messages, ["-"] * count, once=True)
        read_rate = await _drain_read(transport, count, size)
        take_rate = await _drain_take(transport, spec, count)
    finally:
        if kind != "list":
            await transport.holding.stop()
        names = batches.names(spec.task_name)
        await delete_prefix(redis, names.keys[: names.keys.index("}") + 1])
        await delete_prefix(redis, queue)
        await broker.shutdown()
    return read_rate, take_rate


async def run(args: argparse.Namespace) -> None:
    print("| round | read msg/s | take msg/s | take / read |")
    print("|---|---|---|---|")
    for index in range(args.rounds):
        read_rate, take_rate = await _round(
            args.url, args.messages, args.batch_size, args.broker
        )
        print(
            f"| {index + 1} | {read_rate:,.0f} | {take_rate:,.0f} | "
            f"{take_rate / read_rate:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=["stream", "list"], default="stream")
    parser.add_argument(
        "--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
