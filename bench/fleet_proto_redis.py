"""Redis prototypes of ``bench/fleet_proto.py`` (redis-py, no plugin).

* ``stream-today`` / ``list-today``: what the plugin does now: every
  process reads as fast as it can and buffers alone (a buffer per key,
  flushed on size or ``batch_timeout`` after its first message arrived).
* ``stream-wait`` / ``list-wait``: messages wait *in Redis*; a worker takes
  a batch only when one is worth taking (``fleet_proto_lua``), atomically.
  A queue per (task, key): ``{prefix}:q:<key>``; the sorted set
  ``{prefix}:keys`` lists the keys that may hold messages; idle workers
  block on the stream ``{prefix}:wake`` (one ``XADD MAXLEN 1`` per send
  round trip) instead of polling.
  With ``plain`` the producer is a plain taskiq kicker: it writes to the
  main queue ``{prefix}:main`` only, and every worker forwards what it
  reads there (one MULTI: the dedicated queue, the key, the wake, the ack).
"""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bench.fleet_proto_common import Config, LocalBuffers, Report, run_batch
from bench.fleet_proto_lua import LIST_TAKE, STREAM_TAKE
from bench.measure import delete_prefix

GROUP = "g"
#: Keys one take call looks at (oldest first).
SCAN = 64


class _RedisBase:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # no socket timeout: blocking reads last up to ``idle_block``
        self.redis: Redis = Redis.from_url(cfg.urls["redis"], socket_timeout=None)
        self.base = "{" + cfg.prefix + "}"
        self.consumer = f"c{id(self)}-{time.monotonic_ns()}"

    def q(self, key: str) -> str:
        return f"{self.base}:q:{key}"

    async def setup(self) -> None:
        return None

    async def close(self) -> None:
        await self.redis.aclose()

    async def teardown(self) -> None:
        await delete_prefix(self.redis, self.base)


class StreamToday(_RedisBase):
    """One stream, every process reads and buffers alone."""

    async def setup(self) -> None:
        await self.redis.xgroup_create(self.q("all"), GROUP, "0", mkstream=True)

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for at, key in sent:
                pipe.xadd(self.q("all"), {"s": repr(at), "k": key})
            await pipe.execute()

    async def work(self, report: Report) -> None:
        buffers = LocalBuffers(self.cfg)
        stream = self.q("all")
        while True:
            block = max(1, int(buffers.next_due() * 1000))
            report.count()
            reply: Any = await self.redis.xreadgroup(
                GROUP, self.consumer, {stream: ">"}, self.cfg.batch_size, block
            )
            full = []
            for _, entries in reply:
                for entry_id, fields in entries:
                    done = buffers.add(fields[b"k"].decode(), (entry_id, fields))
                    if done:
                        full.append((fields[b"k"].decode(), done))
            for key, items in full + buffers.due():
                await run_batch(report, key, *self._acker(report, items))

    def _acker(self, report: Report, items: list[Any]) -> Any:
        async def ack() -> None:
            report.count()
            await self.redis.xack(self.q("all"), GROUP, *[i for i, _ in items])

        return [float(fields[b"s"]) for _, fields in items], ack


class _WaitBase(_RedisBase):
    """The worker loop of "wait in the broker"; subclasses: what a queue is."""

    script_text = ""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.take = self.redis.register_script(self.script_text)

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            now_ms = int(time.time() * 1000)
            for at, key in sent:
                if self.cfg.plain:
                    self._plain_send(pipe, at, key)
                else:
                    self._enqueue(pipe, at, key, None)
                    pipe.zadd(f"{self.base}:keys", {key: now_ms}, nx=True)
            if not self.cfg.plain:
                pipe.xadd(f"{self.base}:wake", {"w": "1"}, maxlen=1)
            await pipe.execute()

    def _plain_send(self, pipe: Any, at: float, key: str) -> None:
        raise NotImplementedError

    def _enqueue(self, pipe: Any, at: float, key: str, origin: int | None) -> None:
        raise NotImplementedError

    async def _forward(self, report: Report) -> None:
        raise NotImplementedError

    async def _ack(self, report: Report, key: str, items: list[Any]) -> list[float]:
        raise NotImplementedError

    async def work(self, report: Report) -> None:
        forwarder = (
            asyncio.create_task(self._forward(report)) if self.cfg.plain else None
        )
        try:
            await self._take_loop(report)
        finally:
            if forwarder:
                forwarder.cancel()

    async def _take_loop(self, report: Report) -> None:
        cfg = self.cfg
        keys = [f"{self.base}:keys", f"{self.base}:wake"]
        args: list[Any] = [
            GROUP,
            self.consumer,
            cfg.batch_size,
            int(cfg.batch_timeout * 1000),
        ]
        args += [int(cfg.slack * 1000), f"{self.base}:q:", SCAN]
        while True:
            report.count()
            reply = await self.take(keys, args)
            if reply[0] == 1:
                key, items = reply[1].decode(), reply[2]
                sent = [self._sent(item) for item in items]
                await run_batch(report, key, sent, self._acker(report, key, items))
            elif reply[1] >= 0:
                await asyncio.sleep(min(reply[1] / 1000, cfg.poll))
            else:  # nothing waits: block until a producer wakes us
                await self._idle(report, keys[1], reply[2])

    async def _idle(self, report: Report, wake: str, since: bytes) -> None:
        """Block on the wake stream until an entry after ``since`` exists.

        Nothing can wait without a wake after ``since`` (every send and
        forward adds one in its MULTI), so a timeout needs no new check.
        """
        ms = int(self.cfg.idle_block * 1000)
        while True:
            report.count()
            if await self.redis.xread({wake: since}, count=1, block=ms):
                return

    def _sent(self, item: Any) -> float:
        raise NotImplementedError

    def _acker(self, report: Report, key: str, items: list[Any]) -> Any:
        async def ack() -> None:
            await self._ack(report, key, items)

        return ack


class StreamWait(_WaitBase):
    """A stream per key; a batch is read only once it is worth reading."""

    script_text = STREAM_TAKE

    def _plain_send(self, pipe: Any, at: float, key: str) -> None:
        pipe.xadd(f"{self.base}:main", {"s": repr(at), "k": key})

    async def setup(self) -> None:
        main = f"{self.base}:main"
        await self.redis.xgroup_create(main, GROUP, "0", mkstream=True)

    def _enqueue(self, pipe: Any, at: float, key: str, origin: int | None) -> None:
        fields = {"s": repr(at)} if origin is None else {"s": repr(at), "t": origin}
        pipe.xadd(self.q(key), fields)

    def _sent(self, item: Any) -> float:
        fields = dict(zip(item[1][::2], item[1][1::2], strict=True))
        return float(fields[b"s"])

    async def _ack(self, report: Report, key: str, items: list[Any]) -> list[float]:
        report.count()
        await self.redis.xack(self.q(key), GROUP, *[item[0] for item in items])
        return []

    async def _forward(self, report: Report) -> None:
        main = f"{self.base}:main"
        while True:
            report.count()
            reply: Any = await self.redis.xreadgroup(
                GROUP, self.consumer, {main: ">"}, 100, int(self.cfg.idle_block * 1000)
            )
            for _, entries in reply:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for entry_id, fields in entries:
                        key = fields[b"k"].decode()
                        origin = int(entry_id.split(b"-")[0])
                        self._enqueue(pipe, float(fields[b"s"]), key, origin)
                        pipe.zadd(f"{self.base}:keys", {key: origin}, nx=True)
                        pipe.xack(main, GROUP, entry_id)
                    pipe.xadd(f"{self.base}:wake", {"w": "1"}, maxlen=1)
                    report.count(len(pipe))
                    await pipe.execute()


class ListToday(_RedisBase):
    """One list, every process pops and buffers alone."""

    async def send(self, sent: Sequence[tuple[float, str]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for at, key in sent:
                pipe.lpush(self.q("all"), f"{at!r}|{key}")
            await pipe.execute()

    async def work(self, report: Report) -> None:
        buffers = LocalBuffers(self.cfg)
        while True:
            timeout = max(0.01, buffers.next_due())
            report.count()
            got = await self.redis.brpop([self.q("all")], timeout)
            items: list[Any] = [got[1]] if got else []
            if got:
                report.count()
                more: Any = await self.redis.rpop(self.q("all"), self.cfg.batch_size)
                items += more or []
            full = []
            for item in items:
                at, key = item.decode().split("|")
                done = buffers.add(key, float(at))
                if done:
                    full.append((key, done))
            for key, sent in full + buffers.due():
                await run_batch(report, key, sent, _nothing)


async def _nothing() -> None:
    return None


class ListWait(_WaitBase):
    """A list per key (``"<deadline base ms>|<sent>"``); taken by RPOP count."""

    script_text = LIST_TAKE

    def _plain_send(self, pipe: Any, at: float, key: str) -> None:
        pipe.lpush(f"{self.base}:main", f"{at!r}|{key}")

    def _enqueue(self, pipe: Any, at: float, key: str, origin: int | None) -> None:
        ms = origin if origin is not None else int(at * 1000)
        pipe.lpush(self.q(key), f"{ms}|{at!r}")

    def _sent(self, item: Any) -> float:
        return float(item.decode().split("|")[1])

    async def _ack(self, report: Report, key: str, items: list[Any]) -> list[float]:
        return []  # a list has no acks

    async def _forward(self, report: Report) -> None:
        main = f"{self.base}:main"
        while True:
            report.count()
            got = await self.redis.brpop([main], self.cfg.idle_block)
            if not got:
                continue
            report.count()
            items = [got[1], *(await self.redis.rpop(main, 99) or [])]
            now_ms = int(time.time() * 1000)  # a plain list message has no time
            async with self.redis.pipeline(transaction=True) as pipe:
                for item in items:
                    at, key = item.decode().split("|")
                    self._enqueue(pipe, float(at), key, now_ms)
                    pipe.zadd(f"{self.base}:keys", {key: now_ms}, nx=True)
                pipe.xadd(f"{self.base}:wake", {"w": "1"}, maxlen=1)
                report.count(len(pipe))
                await pipe.execute()
