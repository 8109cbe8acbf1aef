"""The stream transport's reads on the real Redis, on RESP2 and RESP3 clients.

A read is a plain ``XREADGROUP`` whose reply is taken as the parser gives
it (a list of streams in RESP2, a map in RESP3), run on both protocols
(``protocol=`` of the broker's connections, as a user may set it;
redis-py 8.2 speaks RESP3 by default, 8.1 RESP2), with hiredis and with
redis-py's pure-Python parser that a user may choose (``parser_class``).
"""

import asyncio
import logging
from typing import Any

import pytest
from redis._parsers import _AsyncRESP2Parser
from redis.asyncio import Redis
from taskiq import BrokerMessage
from taskiq_redis import RedisStreamBroker

from taskiq_batching._compat.redis_py import hiredis_available
from taskiq_batching.transports.delivery import Delivery
from taskiq_batching.transports.redis_stream import StreamTransport
from tests.integration.workers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def kick(broker: RedisStreamBroker, stream: str, payloads: list[bytes]) -> None:
    for index, payload in enumerate(payloads):
        message = BrokerMessage(
            task_id=str(index),
            task_name="t",
            message=payload,
            labels={"queue_name": stream},
        )
        await broker.kick(message)


on_both_protocols = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


@pytest.fixture(params=["hiredis", "python"])
def reader(request: pytest.FixtureRequest) -> str:
    """What the transport's client parses replies with."""
    way: str = request.param
    if way == "hiredis" and not hiredis_available():
        pytest.skip("hiredis is not installed")
    return way


def parser_options(reader: str) -> dict[str, Any]:
    """The broker's connection options for a reader: the pure-Python parser.

    redis-py swaps its RESP2 parser for the RESP3 one on a RESP3 connection.
    """
    return {} if reader == "hiredis" else {"parser_class": _AsyncRESP2Parser}


@on_both_protocols
async def test_reads_give_every_stream_entry_once_in_order(
    redis_url: str,
    redis: Redis,
    queue: str,
    caplog: pytest.LogCaptureFixture,
    reader: str,
    protocol: int,
) -> None:
    extra = f"{queue}-extra"
    broker = RedisStreamBroker(
        redis_url,
        queue_name=queue,
        additional_streams={extra: ">"},
        xread_count=40,
        xread_block=200,
        protocol=protocol,
        **parser_options(reader),
    )
    await broker.startup()  # the group, from "$": created before the sends
    main = [f"m{i}".encode() for i in range(150)]
    side = [f"x{i}".encode() for i in range(30)]
    await kick(broker, queue, main)
    await kick(broker, extra, side)
    transport = StreamTransport(broker)
    chunks: list[list[Delivery]] = []
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        while sum(len(c) for c in chunks) < len(main) + len(side):
            chunk = await transport.read(100)
            assert chunk, "an entry was lost"
            chunks.append(chunk)
        # Nothing waits: a blocking read answers nil (a null in RESP3).
        assert await transport.read(100) == []
    deliveries = [d for chunk in chunks for d in chunk]
    by_stream: dict[str, list[bytes]] = {queue: [], extra: []}
    for delivery in deliveries:
        by_stream[delivery.handle[0]].append(delivery.data)
    assert by_stream == {queue: main, extra: side}
    # COUNT applies to each stream of one XREADGROUP.
    per_stream = [
        sum(1 for d in chunk if d.handle[0] == stream)
        for chunk in chunks
        for stream in (queue, extra)
    ]
    assert max(per_stream) == 40
    assert not caplog.records
    for stream, count in ((queue, len(main)), (extra, len(side))):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == count
    await transport.ack([d.handle for d in deliveries])
    for stream in (queue, extra):
        assert (await redis.xpending(stream, "taskiq"))["pending"] == 0
    await transport.close()
    await broker.shutdown()


@on_both_protocols
async def test_an_idle_reader_blocks_then_wakes_for_a_new_entry(
    redis_url: str, redis: Redis, queue: str, protocol: int
) -> None:
    broker = RedisStreamBroker(
        redis_url, queue_name=queue, xread_block=10_000, protocol=protocol
    )
    await broker.startup()
    transport = StreamTransport(broker)

    async def blocked() -> int:
        return int((await redis.info("clients"))["blocked_clients"])

    already = await blocked()

    async def read_one() -> list[Delivery]:
        while not (chunk := await transport.read(10)):
            pass
        return chunk

    waiting = asyncio.ensure_future(read_one())

    async def reader_blocks() -> bool:
        return await blocked() > already

    await eventually(reader_blocks, 5, "the reader blocks in XREADGROUP")
    assert not waiting.done()
    await kick(broker, queue, [b"late"])
    chunk = await asyncio.wait_for(waiting, timeout=5)
    assert [d.data for d in chunk] == [b"late"]
    await transport.close()
    await broker.shutdown()


@on_both_protocols
async def test_a_read_recovers_a_lost_group(
    redis_url: str,
    redis: Redis,
    queue: str,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
) -> None:
    broker = RedisStreamBroker(
        redis_url, queue_name=queue, xread_block=100, protocol=protocol
    )
    await broker.startup()
    transport = StreamTransport(broker)
    await kick(broker, queue, [b"before"])
    first = await transport.read(10)
    await transport.ack([d.handle for d in first])
    await redis.xgroup_destroy(queue, "taskiq")
    await kick(broker, queue, [b"after"])
    with caplog.at_level(logging.WARNING, "taskiq_batching"):
        chunk = await transport.read(10)
    assert [d.data for d in chunk] == [b"after"]
    assert "was missing" in caplog.text
    await transport.close()
    await broker.shutdown()


@on_both_protocols
async def test_acks_releases_reclaims_and_recoveries_on_either_protocol(
    redis_url: str, redis: Redis, queue: str, reader: str, protocol: int
) -> None:
    def broker(consumer: str) -> RedisStreamBroker:
        return RedisStreamBroker(
            redis_url,
            queue_name=queue,
            consumer_name=consumer,
            xread_block=100,
            idle_timeout=60_000,
            protocol=protocol,
            **parser_options(reader),
        )

    mine, other = broker("mine"), broker("other")
    await mine.startup()
    await kick(mine, queue, [f"m{i}".encode() for i in range(6)])
    transport, dead = StreamTransport(mine), StreamTransport(other)
    chunk = await transport.read(10)
    assert [d.data for d in chunk] == [f"m{i}".encode() for i in range(6)]
    await transport.ack([d.handle for d in chunk[:2]])
    # Released: made idle enough for any worker's next sweep (XAUTOCLAIM).
    await transport.release(chunk[2:4])
    claimed = await dead.reclaim()
    assert sorted(d.data for d in claimed) == [b"m2", b"m3"]
    assert not await dead.reclaim()  # this consumer's own now, in use
    # Taken by a read that was cancelled: pending, never seen; found by a
    # read of this consumer's history (XREADGROUP from 0).
    await kick(mine, queue, [b"late"])
    await redis.xreadgroup("taskiq", "mine", {queue: ">"}, count=10)
    cancelled = asyncio.ensure_future(asyncio.sleep(60))
    recovered = await transport.interrupt(cancelled)
    assert [d.data for d in recovered] == [b"late"]
    await transport.ack([d.handle for d in chunk[4:] + recovered])
    await dead.ack([d.handle for d in claimed])
    assert (await redis.xpending(queue, "taskiq"))["pending"] == 0
    for each in (transport, dead):
        await each.close()
    await mine.shutdown()
    await other.shutdown()
