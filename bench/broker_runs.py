"""Drains of RabbitMQ and NATS JetStream queues, like ``workloads.taskiq_drain``.

A drain pre-loads ``messages`` ``work(i)`` messages (built as ``kiq``
builds them, with the task_ids ``t0 .. t{N-1}``), starts ``taskiq worker
bench.taskiq_worker:broker`` (or the profiled worker), polls the broker
(``bench.brokers``) every 5 ms until every message is done, and reports
the rate, the worker's CPU, Redis's (the result backend) and the broker
server's. Every queue, stream and Redis key of the drain is deleted
afterwards, whatever happened.
"""

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from taskiq import BrokerMessage

from bench import brokers
from bench.measure import (
    BenchError,
    ProgressProbe,
    redis_cpu_seconds,
    wait_for,
    watch_drain,
)
from bench.procs import Proc, started, taskiq_worker_argv
from bench.taskiq_app import App, AppSettings, build
from bench.workloads import (
    MB,
    Env,
    Metrics,
    batch_sizes,
    cleanup,
    drain_timeout,
    verify,
)

#: Seconds the worker gets to send its last acks before it is killed.
ACK_GRACE = 0.5


def broker_messages(app: App, count: int) -> list[BrokerMessage]:
    """``work(i)`` for i < count, formatted as ``kick`` gets them."""
    kicker = app.task.kicker()
    messages = []
    for item in range(count):
        kicker.with_task_id(brokers.task_id(item))
        messages.append(app.broker.formatter.dumps(kicker._prepare_message(item)))
    return messages


class Watch:
    """The queue of one drain: pre-loading, the probe, CPU meters, cleanup."""

    def __init__(self, env: Env, s: AppSettings, messages: int) -> None:
        self.env = env
        self.s = s
        self.kind = s.broker
        self.messages = messages
        self.amqp = brokers.AmqpQueue(s.queue) if self.kind == "amqp" else None
        self.nats = brokers.NatsConsumer(s.queue) if self.kind == "nats" else None
        self.began: tuple[float, float, float, float] | None = None
        self.cpu: dict[str, float] = {}

    async def preload(self, app: App) -> None:
        payloads = broker_messages(app, self.messages)
        if self.amqp is not None:
            await self.amqp.open()
            await brokers.amqp_preload(app.broker, payloads)
            await brokers.wait_ready(self.amqp.ready, self.messages, "RabbitMQ")
        elif self.nats is not None:
            await self.nats.open()
            await brokers.nats_preload(app.broker, payloads)

    def probe(self) -> ProgressProbe:
        if self.amqp is not None:
            return self.amqp.probe(self.env.redis, self.s.queue, self.messages)
        assert self.nats is not None
        return self.nats.probe(self.messages)

    async def _now(self, proc: Proc) -> tuple[float, float, float, float]:
        redis = await redis_cpu_seconds(self.env.redis)
        server = await asyncio.to_thread(brokers.server_cpu_seconds, self.kind)
        return time.monotonic(), proc.cpu_seconds(), redis, server

    def meter(self, proc: Proc) -> Callable[[], Awaitable[None]]:
        async def start() -> None:
            self.began = await self._now(proc)

        return start

    async def stop_meter(self, proc: Proc) -> None:
        if self.began is None:
            return
        now = await self._now(proc)
        seconds = max(now[0] - self.began[0], 1e-3)
        for index, name in enumerate(("worker_cpu", "redis_cpu", "broker_cpu"), 1):
            self.cpu[name] = (now[index] - self.began[index]) / seconds

    async def check_acked(self) -> None:
        """After the worker was killed: nothing is left unacked (RabbitMQ)."""
        if self.amqp is None:
            return
        await asyncio.sleep(0.2)  # the server requeues a dead consumer's
        left = await self.amqp.ready()
        if left:
            raise BenchError(f"{left} message(s) not acked by the worker")

    async def close(self) -> None:
        for owner in (self.amqp, self.nats):
            if owner is not None:
                with contextlib.suppress(Exception):
                    await owner.close()


@contextlib.asynccontextmanager
async def watched(
    env: Env, label: str, messages: int, **values: Any
) -> AsyncIterator[tuple[Watch, App]]:
    s = env.settings(env.queue(label), **values)
    app = build(s)
    watch = Watch(env, s, messages)
    try:
        await watch.preload(app)
        yield watch, app
    finally:
        await watch.close()
        await cleanup(env, s.queue)


async def _drain(watch: Watch, proc: Proc, on_start: bool = True) -> Any:
    try:
        return await watch_drain(
            watch.probe(),
            watch.messages,
            drain_timeout(watch.messages),
            proc.alive,
            on_start=watch.meter(proc) if on_start else None,
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- worker output ---\n{proc.output()}") from None


async def broker_drain(env: Env, label: str, messages: int, **values: Any) -> Metrics:
    """Pre-load ``messages`` on RabbitMQ or NATS, start ``taskiq worker``, time it."""
    async with watched(env, label, messages, **values) as (watch, _):
        s = watch.s
        argv = taskiq_worker_argv("bench.taskiq_worker:broker")
        with started(argv, s.to_env(), env.log(s.queue), label) as proc:
            timing = await _drain(watch, proc)
            await watch.stop_meter(proc)
            sizes: list[int] = []
            if s.batched:
                await wait_for(
                    lambda: _sizes_reach(env, s.queue, messages),
                    5,
                    "the batch sizes report",
                )
                sizes = await batch_sizes(env, s.queue)
            peak = proc.peak_rss()
            await asyncio.sleep(ACK_GRACE)
        await watch.check_acked()
        await verify(env, s, messages, [brokers.task_id(i) for i in range(messages)])
    metrics: Metrics = {
        "rate": timing.rate,
        "rate_first_done": timing.rate_from_first_done,
        "seconds": timing.seconds,
        "peak_rss_mb": peak / MB,
        **watch.cpu,
    }
    worker = watch.cpu.get("worker_cpu", 0.0)
    metrics["rate_per_cpu"] = timing.rate / worker if worker else 0.0
    if sizes:
        metrics["fill"] = statistics.fmean(sizes) / s.batch_size
        metrics["batches"] = len(sizes)
    return metrics


async def _sizes_reach(env: Env, queue: str, total: int) -> bool:
    return sum(await batch_sizes(env, queue)) >= total


async def profiled_broker_drain(
    env: Env, label: str, messages: int, out: Path, **values: Any
) -> Metrics:
    """A drain with the worker under pyinstrument (``bench.profile_worker``).

    The worker runs in the started process; after the drain it gets
    SIGTERM, stops, and writes ``out``.{txt,html,json,pyisession}.
    """
    async with watched(env, label, messages, **values) as (watch, _):
        s = watch.s
        argv = [
            sys.executable,
            "-m",
            "bench.profile_worker",
            str(out),
            "bench.taskiq_worker:broker",
            "--log-level",
            "WARNING",
            "--ack-type",
            "when_saved",
        ]
        with started(argv, s.to_env(), env.log(s.queue), label) as proc:
            timing = await _drain(watch, proc, on_start=False)
            proc.process.terminate()
            try:
                await asyncio.to_thread(proc.process.wait, 120)
            except Exception as exc:
                raise BenchError(f"the profiled worker did not stop: {exc!r}") from None
        if not out.with_suffix(".pyisession").exists():
            raise BenchError(f"no profile written:\n{proc.output()}")
    return {"rate": timing.rate}


BATCHED = {"batched": True}
#: The batched drain of each broker profiled after the rounds.
PROFILED = {"amqp": "batched-amqp", "nats": "batched-nats"}


def drain(
    kind: str, batched: bool, scale: int = 1
) -> Callable[[Env, Any, Any], Awaitable[Metrics]]:
    """A suite workload: one drain of ``opts.messages * scale`` messages."""

    async def run(env: Env, opts: Any, _: Any) -> Metrics:
        label = ("b" if batched else "p") + kind
        return await broker_drain(
            env, label, opts.messages * scale, broker=kind, batched=batched
        )

    return run
