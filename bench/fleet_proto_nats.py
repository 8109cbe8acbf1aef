"""The NATS lease of ``bench/fleet_proto.py``, with the improvements docs/fleet.md asks.

The consumer has ``max_waiting=1``: the server keeps one pull request
waiting and answers any other with 409, so the process whose request waits
is the one that assembles (``bench/fleet_proto_mq.py``'s ``nats-lease-v1``
is the first version). Changes measured here:

* **pull B at once in a backlog**: when the last batch came back full, the
  first request of the next is ``batch_size`` with ``no_wait`` (what the
  stream holds now), not one message then ``batch_size - 1``;
* ``expires`` of the filling request counts from the first message's
  stream timestamp (the send), so the bound holds from the send;
* ``nats-lease`` (hand-off): the holder lets the slot go when its batch is
  assembled and says so on a core subject (``<stream>.free``, payload
  ``full`` after a full batch); the others wait for that word (or the idle
  wait, for a holder that died) instead of retrying on a timer, so the slot
  passes within a round trip and several processes run batches;
* ``nats-lease-keep``: the holder sends its next request before it runs
  the batch, so the slot is never free in between; the others only fail
  over, retrying after ``backoff`` (20 ms while their own last batch was
  full).

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
#: Retry pause of a refused process whose own last batch was full (keep).
SHORT_BACKOFF = 0.02


class NatsLease(NatsProto):
    """``max_waiting=1`` lease; ``keep``: the holder never lets it go."""

    def __init__(self, cfg: Config, keep: bool) -> None:
        super().__init__(cfg, lease=True)
        self.keep = keep
        self.base = ""
        self.serial = 0
        self.got: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.free = asyncio.Event()
        self.full_hint = False
        self.free_subject = f"{cfg.prefix}.free"

    async def work(self, report: Report) -> None:
        nc = await self._connect()
        self.base = nc.new_inbox()
        await nc.subscribe(f"{self.base}.*", cb=self._arrive)
        await nc.subscribe(self.free_subject, cb=self._freed)
        await self._loop(report)

    async def _arrive(self, msg: Any) -> None:
        # a status comes on the request's reply subject; a message on its
        # stream subject (it is ours, whichever request brought it)
        serial = self.serial
        if _status(msg):
            serial = int(msg.subject.rsplit(".", 1)[1])
        self.got.put_nowait((serial, msg))

    async def _freed(self, msg: Any) -> None:
        self.full_hint = msg.data == b"full"
        self.free.set()

    def _opening(self, backlog: bool) -> tuple[int, float]:
        """The first request of a batch: (batch, expires; 0 = no_wait)."""
        cfg = self.cfg
        if not backlog:
            return 1, cfg.idle_block  # wait for the first message
        if self.keep:  # held while the batch runs: must wait, not no_wait
            return cfg.batch_size, cfg.batch_timeout - cfg.slack
        return cfg.batch_size, 0.0

    async def _request(self, report: Report, batch: int, expires: float) -> None:
        self.serial += 1
        self.free.clear()
        report.count()
        body: dict[str, Any] = {"batch": batch, "expires": int(expires * 1e9)}
        if expires <= 0:
            body = {"batch": batch, "no_wait": True}
        api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{DURABLE}"
        reply = f"{self.base}.{self.serial}"
        await self.nc.publish(api, json.dumps(body).encode(), reply=reply)

    async def _until_end(self, want: int, timeout: float, msgs: list[Any]) -> str:
        """Add arrivals to ``msgs`` until ``want`` came or the request ended.

        :return: ``"full"``, the server's status (``no_wait``: 404 none,
            408 fewer than asked), or ``"timeout"``.
        """
        deadline = time.monotonic() + timeout
        while want > 0:
            try:
                serial, msg = await asyncio.wait_for(
                    self.got.get(), max(0.0, deadline - time.monotonic())
                )
            except asyncio.TimeoutError:
                return "timeout"
            status = _status(msg)
            if status is None:
                msgs.append(msg)
                want -= 1
            elif serial == self.serial:
                return status
        return "full"

    async def _fill(self, report: Report, msgs: list[Any], status: str) -> None:
        """Pull the rest until ``batch_size`` or the first message's deadline."""
        cfg = self.cfg
        due = _stream_time(msgs[0]) + cfg.batch_timeout - cfg.slack
        while len(msgs) < cfg.batch_size and status in ("full", "404", "408"):
            left = due - time.time()
            if left <= 0:
                return
            want = cfg.batch_size - len(msgs)
            await self._request(report, want, left)
            status = await self._until_end(want, left + MARGIN, msgs)

    async def _refused(self, backlog: bool) -> None:
        """Someone else holds the slot: wait for it to be let go."""
        if self.keep:
            await asyncio.sleep(SHORT_BACKOFF if backlog else self.cfg.backoff)
            return
        # a holder that died never says so: try again after the idle wait
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.free.wait(), self.cfg.idle_block)

    async def _loop(self, report: Report) -> None:
        backlog, sent = False, False
        while True:
            batch, expires = self._opening(backlog or self.full_hint)
            if not sent:
                await self._request(report, batch, expires)
            sent = False
            msgs: list[Any] = []
            status = await self._until_end(batch, expires + MARGIN, msgs)
            if not msgs:
                if status == "409":
                    await self._refused(backlog)
                elif expires <= 0:  # no backlog after all: wait for one
                    backlog = self.full_hint = False
                continue
            await self._fill(report, msgs, status)
            backlog = len(msgs) >= self.cfg.batch_size
            if self.keep:
                await self._request(report, *self._opening(backlog))
                sent = True
            else:
                report.count()
                await self.nc.publish(self.free_subject, b"full" if backlog else b"")
            key = msgs[0].data.decode().split("|")[1]
            await run_batch(report, key, *self._acker(report, msgs))
