"""The NATS lease of ``bench/fleet_proto.py``, with the improvements docs/fleet.md asks.

The consumer has ``max_waiting=1``: the server keeps one pull request
waiting and answers any other with 409, so the process whose request waits
is the one that assembles (``nats-lease-v1`` in ``bench/fleet_proto_mq.py``
is the first version: pull 1, then ``batch_size - 1`` until the first
message's deadline, with a gap between the two where another process's
request takes the slot).

Here the holder keeps ONE request waiting at a time and buffers what comes
locally, each buffer due at its first message's *stream timestamp* +
``batch_timeout`` - ``slack`` (the bound holds from the send):

* a request asks for what completes the buffer (``batch_size`` minus what
  it holds), expiring at the buffer's deadline (or after the idle wait
  when it holds nothing): it ends exactly when the batch is full or due,
  so in a backlog one request brings a whole batch at once;
* a buffer due while its request still waits is run at once; the request
  keeps the slot (the next batch's messages are this holder's);
* ``nats-lease`` (hand-off): when a request has ended and a batch is
  ready, the holder lets the slot go and says so on a core subject
  (``<stream>.free``) before running it; the others wait for that word
  (or the idle wait, for a holder that died) instead of retrying on a
  timer, so the slot passes within a round trip and every process runs
  batches;
* ``nats-lease-keep``: the holder never lets go (its next request is sent
  before it runs a batch); the others only fail over, retrying after
  ``backoff``.

Each request has its own reply subject (``<inbox>.<serial>``) so that a
late status of an older request never ends the current one.
"""

import asyncio
import contextlib
import json
import time
from typing import Any

from bench.fleet_proto_common import Config, Report, run_batch
from bench.fleet_proto_mq import DURABLE, NatsProto, _status, _stream_time

#: Seconds a request's answer may take beyond its expiry before giving up.
MARGIN = 1.0


class NatsLease(NatsProto):
    """``max_waiting=1`` lease; ``keep``: the holder never lets it go."""

    def __init__(self, cfg: Config, keep: bool) -> None:
        super().__init__(cfg, lease=True)
        self.keep = keep
        self.base = ""
        self.serial = 0
        self.got: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.free = asyncio.Event()
        self.free_subject = f"{cfg.prefix}.free"
        self.buffer: list[Any] = []
        #: messages the request in progress may still bring (0: none waits).
        self.owed = 0
        self.given_up_at = 0.0

    async def work(self, report: Report) -> None:
        nc = await self._connect()
        self.base = nc.new_inbox()
        await nc.subscribe(f"{self.base}.*", cb=self._arrive)
        await nc.subscribe(self.free_subject, cb=self._freed)
        while True:
            if not self.owed and not await self._ask(report) and not self.buffer:
                await self._refused()
                continue
            await self._receive()
            for batch in self._ready():
                if not self.owed and not self.keep:
                    report.count()  # let the slot go before running
                    await self.nc.publish(self.free_subject, b"")
                elif not self.owed:
                    await self._ask(report, answer=False)
                key = batch[0].data.decode().split("|")[1]
                await run_batch(report, key, *self._acker(report, batch))

    async def _arrive(self, msg: Any) -> None:
        # a status comes on the request's reply subject; a message on its
        # stream subject (it is ours, whichever request brought it)
        serial = self.serial
        if _status(msg):
            serial = int(msg.subject.rsplit(".", 1)[1])
        self.got.put_nowait((serial, msg))

    async def _freed(self, msg: Any) -> None:
        self.free.set()

    def _due(self) -> float:
        """When the buffer must run (its first message's send + T - slack)."""
        cfg = self.cfg
        return _stream_time(self.buffer[0]) + cfg.batch_timeout - cfg.slack

    async def _ask(self, report: Report, answer: bool = True) -> bool:
        """Send a request for what completes the buffer; False if refused.

        :param answer: wait for the first answer (a 409 comes at once).
        """
        cfg = self.cfg
        expires = self._due() - time.time() if self.buffer else cfg.idle_block
        if expires <= 0.001:
            return True  # due now: run it first
        self.serial += 1
        self.free.clear()
        self.owed = cfg.batch_size - len(self.buffer)
        self.given_up_at = time.monotonic() + expires + MARGIN
        report.count()
        body = {"batch": self.owed, "expires": int(expires * 1e9)}
        api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{DURABLE}"
        reply = f"{self.base}.{self.serial}"
        await self.nc.publish(api, json.dumps(body).encode(), reply=reply)
        return not answer or await self._receive(first=True) != "409"

    async def _receive(self, first: bool = False) -> str | None:
        """Take arrivals until the buffer is due, a request ends, or (first) one.

        :return: the status that ended the request, if one did.
        """
        while True:
            wait = self.given_up_at - time.monotonic() if self.owed else 0.0
            if self.buffer:
                wait = min(wait, self._due() - time.time())
            if not self.got.empty():
                serial, msg = self.got.get_nowait()
            elif wait <= 0:
                if time.monotonic() >= self.given_up_at:
                    self.owed = 0  # no end came: ask again
                return None
            else:
                try:
                    serial, msg = await asyncio.wait_for(self.got.get(), wait)
                except asyncio.TimeoutError:
                    continue
            status = _status(msg)
            if status is None:
                self.buffer.append(msg)
                self.owed = max(0, self.owed - 1)
            elif serial == self.serial:
                self.owed = 0
                return status
            if first or len(self.buffer) >= self.cfg.batch_size or not self.owed:
                return None

    def _ready(self) -> list[list[Any]]:
        """Batches to run now: full ones, and the buffer if it is due."""
        size, out = self.cfg.batch_size, []
        while len(self.buffer) >= size:
            out.append(self.buffer[:size])
            self.buffer = self.buffer[size:]
        if self.buffer and self._due() <= time.time():
            out.append(self.buffer)
            self.buffer = []
        return out

    async def _refused(self) -> None:
        """Someone else holds the slot: wait for it to be let go."""
        if self.keep:
            await asyncio.sleep(self.cfg.backoff)
            return
        # a holder that died never says so: try again after the idle wait
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.free.wait(), self.cfg.idle_block)
