"""NATS JetStream and RabbitMQ prototypes of ``bench/fleet_proto.py``.

* ``nats-today``: every process keeps a pull request (``batch_size``, 1 s)
  outstanding on one durable consumer and buffers alone.
* ``nats-lease``: the consumer has ``max_waiting=1``: the server keeps at
  most one pull request waiting, so the process whose request waits holds a
  lease kept by the server (others get 409 and retry after ``backoff``).
  The holder pulls ONE message with a long expiry (the idle wait), reads
  its stream timestamp (the send time, from the ack subject), then pulls
  ``batch_size - 1`` more with ``expires`` = what is left of that message's
  ``batch_timeout``: the server ends the request when it is filled or at
  the deadline; when nothing is left (a backlog), with ``no_wait``: what
  the stream holds now, at once.
* ``amqp-today``: every process consumes one queue (prefetch
  2 * batch_size) and buffers alone.
* ``amqp-sac``: the same queue declared ``x-single-active-consumer``: the
  broker delivers to one consumer at a time, which batches alone; the
  timeout counts from the send time the producer put in a header.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
import nats
from nats.js.api import AckPolicy, ConsumerConfig

from bench.fleet_proto_common import Config, LocalBuffers, Report, run_batch

DURABLE = "w"


class NatsProto:
    """One stream, one durable pull consumer, raw pull requests."""

    def __init__(self, cfg: Config, lease: bool) -> None:
        self.cfg = cfg
        self.lease = lease
        self.stream = cfg.prefix
        self.subject = f"{cfg.prefix}.q"
        self.nc: Any = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def _connect(self) -> Any:
        if self.nc is None:
            self.nc = await nats.connect(self.cfg.urls["nats"])
        return self.nc

    async def setup(self) -> None:
        js = (await self._connect()).jetstream()
        await js.add_stream(name=self.stream, subjects=[self.subject])
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=100_000,
            max_waiting=1 if self.lease else 512,
        )
        await js.add_consumer(self.stream, config)

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        nc = await self._connect()
        for at, key in sent:
            await nc.publish(self.subject, f"{at!r}|{key}".encode())
        await nc.flush()

    async def _pull(self, report: Report, batch: int, expires: float) -> None:
        """A pull request; ``expires`` 0: take only what is there (no_wait)."""
        report.count()
        body: dict[str, Any] = {"batch": batch, "expires": int(expires * 1e9)}
        if expires <= 0:
            body = {"batch": batch, "no_wait": True}
        api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{DURABLE}"
        await self.nc.publish(api, json.dumps(body).encode(), reply=self.reply)

    async def work(self, report: Report) -> None:
        nc = await self._connect()
        self.reply = nc.new_inbox()
        await nc.subscribe(self.reply, cb=self._received)
        if self.lease:
            await self._lease_loop(report)
        else:
            await self._today_loop(report)

    async def _received(self, msg: Any) -> None:
        self.inbox.put_nowait(msg)

    async def _today_loop(self, report: Report) -> None:
        buffers = LocalBuffers(self.cfg)
        owed = 0  # messages the outstanding pull request may still bring
        while True:
            if owed <= 0:
                await self._pull(report, self.cfg.batch_size, 1.0)
                owed = self.cfg.batch_size
            full = []
            for msg in await _arrived(self.inbox, buffers.next_due()):
                if _status(msg):
                    owed = 0
                    continue
                owed -= 1
                key = msg.data.decode().split("|")[1]
                if done := buffers.add(key, msg):
                    full.append((key, done))
            for key, msgs in full + buffers.due():
                await run_batch(report, key, *self._acker(report, msgs))

    async def _lease_loop(self, report: Report) -> None:
        cfg = self.cfg
        while True:
            await self._pull(report, 1, cfg.idle_block)
            first = await self._next(cfg.idle_block + 1)
            if first is None or _status(first):
                if first is not None and _status(first) == "409":
                    await asyncio.sleep(cfg.backoff)  # someone else holds it
                continue
            msgs = [first]
            left = _stream_time(first) + cfg.batch_timeout - cfg.slack - time.time()
            if cfg.batch_size > 1:
                # already due (a backlog): take what is there, at once
                await self._pull(report, cfg.batch_size - 1, max(left, 0.0))
                while len(msgs) < cfg.batch_size:
                    msg = await self._next(max(left, 0.0) + 0.5)
                    if msg is None or _status(msg):
                        break
                    msgs.append(msg)
            key = msgs[0].data.decode().split("|")[1]
            await run_batch(report, key, *self._acker(report, msgs))

    async def _next(self, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def _acker(self, report: Report, msgs: list[Any]) -> Any:
        async def ack() -> None:
            report.count(len(msgs))
            for msg in msgs:
                await self.nc.publish(msg.reply, b"+ACK")

        sent = [float(msg.data.decode().split("|")[0]) for msg in msgs]
        return sent, ack

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def teardown(self) -> None:
        js = (await self._connect()).jetstream()
        await js.delete_stream(self.stream)
        await self.close()


async def _arrived(inbox: "asyncio.Queue[Any]", timeout: float) -> list[Any]:
    """What ``inbox`` holds now, or the first arrival within ``timeout``."""
    try:
        got = [await asyncio.wait_for(inbox.get(), timeout)]
    except asyncio.TimeoutError:
        return []
    while not inbox.empty():
        got.append(inbox.get_nowait())
    return got


def _status(msg: Any) -> str | None:
    """A pull request's status code (404/408/409), None for a message."""
    if msg.headers and "Status" in msg.headers:
        return str(msg.headers["Status"])
    return None


def _stream_time(msg: Any) -> float:
    """The time the stream stored the message (the ack subject's ns)."""
    return int(msg.reply.split(".")[-2]) / 1e9


class AmqpProto:
    """One durable queue; ``sac``: single active consumer."""

    def __init__(self, cfg: Config, sac: bool) -> None:
        self.cfg = cfg
        self.sac = sac
        self.conn: Any = None
        self.channel: Any = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def _open(self) -> Any:
        if self.conn is None:
            self.conn = await aio_pika.connect(self.cfg.urls["amqp"])
            self.channel = await self.conn.channel(publisher_confirms=False)
        arguments = {"x-single-active-consumer": True} if self.sac else None
        return await self.channel.declare_queue(
            self.cfg.prefix, durable=True, arguments=arguments
        )

    async def setup(self) -> None:
        await self._open()

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        await self._open() if self.conn is None else None
        for at, key in sent:
            message = aio_pika.Message(
                f"{at!r}|{key}".encode(), headers={"x-sent": repr(at)}
            )
            await self.channel.default_exchange.publish(message, self.cfg.prefix)

    async def work(self, report: Report) -> None:
        queue = await self._open()
        await self.channel.set_qos(prefetch_count=2 * self.cfg.batch_size)
        await queue.consume(self._received)
        buffers = LocalBuffers(self.cfg)
        while True:
            full = []
            # everything delivered so far, not one message at a time: a
            # backlog (messages already due) then makes full batches
            for msg in await _arrived(self.inbox, buffers.next_due()):
                key = msg.body.decode().split("|")[1]
                born = float(msg.headers["x-sent"]) if self.sac else None
                if done := buffers.add(key, msg, born):
                    full.append((key, done))
            for key, msgs in full + buffers.due():
                await run_batch(report, key, *self._acker(report, msgs))

    async def _received(self, msg: Any) -> None:
        self.inbox.put_nowait(msg)

    def _acker(self, report: Report, msgs: list[Any]) -> Any:
        async def ack() -> None:
            report.count(len(msgs))
            for msg in msgs:
                await msg.ack()

        return [float(msg.body.decode().split("|")[0]) for msg in msgs], ack

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def teardown(self) -> None:
        await self._open()
        await self.channel.queue_delete(self.cfg.prefix)
        await self.close()
