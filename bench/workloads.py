"""One run of each kind of workload; each returns its figures as a dict.

Every run uses a queue name of its own (``tbbench-<run id>-<label>-<n>``),
starts its worker only after the queue is loaded, kills the worker's whole
process group when done (``procs.started``), and deletes every Redis key
under its queue name and its PostgreSQL table, whatever happened.
"""

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

import taskiq_batching
from bench import celery_app, cgroups, commandstats
from bench.measure import (
    BenchError,
    DrainTiming,
    as_text,
    celery_probe,
    count_existing,
    create_group,
    delete_prefix,
    list_probe,
    percentile,
    preload,
    redis_cpu_seconds,
    stream_probe,
    wait_for,
    watch_drain,
)
from bench.procs import Proc, started, taskiq_worker_argv
from bench.taskiq_app import App, AppSettings, build

Metrics = dict[str, float]
MB = 1024 * 1024
#: Seconds between two sends of the bulk paced producer.
BULK_TICK = 0.005
#: XADD of each ARGV to stream KEYS[1]: the bulk paced producer's one
#: command per tick, rather than a pipeline of one XADD per message, keeps
#: the producer's own CPU small (it shares the machine's cores with the
#: worker and Redis).
XADD_EACH = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'data', ARGV[i]) end"


@dataclass
class Env:
    """What every workload shares in one benchmark run."""

    redis_url: str
    pg_dsn: str
    run_id: str
    out: Path
    redis: Redis
    counter: "itertools.count[int]" = field(default_factory=itertools.count)

    def queue(self, label: str) -> str:
        return f"tbbench-{self.run_id}-{label}-{next(self.counter)}"

    def log(self, queue: str) -> Path:
        return self.out / "logs" / f"{queue}.log"

    def settings(self, queue: str, **values: Any) -> AppSettings:
        table = queue.replace("-", "_") if values.get("sink") == "pg" else ""
        return AppSettings(
            redis_url=self.redis_url,
            queue=queue,
            pg_dsn=self.pg_dsn,
            pg_table=table,
            **values,
        )


def messages_for(app: App, count: int, first: int = 0) -> tuple[list[bytes], list[str]]:
    """Encoded messages ``work(i)`` exactly as ``kiq`` builds them, and ids."""
    kicker = app.task.kicker()
    payloads: list[bytes] = []
    task_ids: list[str] = []
    for item in range(first, first + count):
        message = kicker._prepare_message(item)
        payloads.append(app.broker.formatter.dumps(message).message)
        task_ids.append(message.task_id)
    return payloads, task_ids


@contextlib.asynccontextmanager
async def pg_table(env: Env, s: AppSettings) -> AsyncIterator[None]:
    """Create the PG sink's table for the run, drop it afterwards."""
    if s.sink != "pg":
        yield
        return
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(env.pg_dsn, timeout=10)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {s.pg_table}")
        await connection.execute(f"CREATE TABLE {s.pg_table} (item integer NOT NULL)")
        yield
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {s.pg_table}")
        await connection.close()


async def pg_count(env: Env, table: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(env.pg_dsn, timeout=10)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


async def cleanup(env: Env, queue: str) -> None:
    await delete_prefix(env.redis, queue)
    await env.redis.delete(f"autoclaim:taskiq:{queue}")


async def batch_sizes(env: Env, queue: str) -> list[int]:
    return [int(size) for size in await env.redis.lrange(f"{queue}:sizes", 0, -1)]


def drain_timeout(messages: int) -> float:
    """Bound of one drain: generous for 200 msg/s, at least 60 s."""
    return max(60.0, messages / 200)


async def verify(
    env: Env, s: AppSettings, messages: int, task_ids: Sequence[str]
) -> None:
    """Check that every item reached the sink and every result was stored."""
    if s.sink == "mset":
        keys = [f"{s.queue}:v:{item}" for item in range(messages)]
        found = await count_existing(env.redis, keys)
        if found != messages:
            raise BenchError(f"MSET sink holds {found} of {messages} items")
    elif s.sink == "pg":
        found = await pg_count(env, s.pg_table)
        if found != messages:
            raise BenchError(f"PG sink holds {found} of {messages} rows")
    if s.results and task_ids:
        found = await count_existing(env.redis, [f"{s.queue}:{i}" for i in task_ids])
        if found != len(task_ids):
            raise BenchError(f"{found} of {len(task_ids)} results stored")


async def taskiq_drain(
    env: Env,
    label: str,
    messages: int,
    workers: int = 1,
    cpu_cap: bool = False,
    **values: Any,
) -> Metrics:
    """Pre-load ``messages``, start ``taskiq worker``, time the drain.

    ``cpu_cap``: the worker processes run in a cgroup limited to
    ``cgroups.CPU_CAP_PER_WORKER`` cores per worker process.
    """
    queue = env.queue(label)
    s = env.settings(queue, **values)
    app = build(s)
    try:
        async with pg_table(env, s):
            if s.broker == "stream":
                await create_group(env.redis, queue)
            payloads, task_ids = messages_for(app, messages)
            await preload(env.redis, queue, s.broker, payloads)
            del payloads
            argv = taskiq_worker_argv("bench.taskiq_worker:broker", workers)
            budget = contextlib.ExitStack()
            if cpu_cap:
                procs = budget.enter_context(
                    cgroups.cpu_budget(cgroups.CPU_CAP_PER_WORKER * workers)
                )
                argv = cgroups.inside(procs, argv)
            before = await commandstats.snapshot(env.redis)
            with budget, started(argv, s.to_env(), env.log(queue), label) as proc:
                cpu = CpuMeter(env, proc)
                timing = await _watch(env, s, proc, messages, task_ids, cpu.start)
                await cpu.stop()
                after = await commandstats.snapshot(env.redis)
                sizes: list[int] = []
                if s.batched:
                    await wait_for(
                        lambda: _sum_is(batch_sizes(env, queue), messages),
                        5,
                        "the batch sizes report",
                    )
                    sizes = await batch_sizes(env, queue)
                peak = proc.peak_rss()
            await verify(env, s, messages, task_ids)
    finally:
        await cleanup(env, queue)
    metrics = _drain_metrics(timing, peak, cpu)
    metrics.update(commandstats.per_message(before, after, messages))
    if sizes:
        metrics["fill"] = statistics.fmean(sizes) / s.batch_size
        metrics["batches"] = len(sizes)
    return metrics


class CpuMeter:
    """CPU used by the worker processes and by Redis during a drain."""

    def __init__(self, env: Env, proc: Proc) -> None:
        self.env = env
        self.proc = proc
        self.began: tuple[float, float, float] | None = None
        self.worker = 0.0
        self.redis = 0.0

    async def _now(self) -> tuple[float, float, float]:
        redis = await redis_cpu_seconds(self.env.redis)
        return time.monotonic(), self.proc.cpu_seconds(), redis

    async def start(self) -> None:
        self.began = await self._now()

    async def stop(self) -> None:
        if self.began is None:
            return
        now = await self._now()
        seconds = max(now[0] - self.began[0], 1e-3)
        self.worker = (now[1] - self.began[1]) / seconds
        self.redis = (now[2] - self.began[2]) / seconds


async def _watch(
    env: Env,
    s: AppSettings,
    proc: Proc,
    messages: int,
    task_ids: Sequence[str],
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> DrainTiming:
    if s.broker == "stream":
        probe = stream_probe(env.redis, s.queue)
    else:
        if not s.results:
            raise BenchError("a list-broker drain needs results to see completion")
        keys = [f"{s.queue}:{task_id}" for task_id in task_ids]
        probe = list_probe(env.redis, s.queue, messages, keys)
    try:
        return await watch_drain(
            probe, messages, drain_timeout(messages), proc.alive, on_start=on_start
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- worker output ---\n{proc.output()}") from None


def _drain_metrics(timing: DrainTiming, peak_rss: int, cpu: CpuMeter) -> Metrics:
    return {
        "rate": timing.rate,
        "rate_first_done": timing.rate_from_first_done,
        "seconds": timing.seconds,
        "peak_rss_mb": peak_rss / MB,
        "worker_cpu": cpu.worker,
        "redis_cpu": cpu.redis,
        "rate_per_cpu": timing.rate / cpu.worker if cpu.worker else 0.0,
    }


async def _sum_is(values: Awaitable[list[int]], total: int) -> bool:
    return sum(await values) >= total


async def transport_drain(env: Env, label: str, messages: int) -> Metrics:
    """The plain redis-py consumer (``bench.transport``) on a taskiq stream."""
    queue = env.queue(label)
    s = env.settings(queue, sink="mset", results=False)
    app = build(s)
    try:
        await create_group(env.redis, queue)
        payloads, _ = messages_for(app, messages)
        await preload(env.redis, queue, "stream", payloads)
        del payloads
        argv = [sys.executable, "-m", "bench.transport"]
        environ = {**s.to_env(), "TBB_COUNT": str(messages)}
        before = await commandstats.snapshot(env.redis)
        with started(argv, environ, env.log(queue), label) as proc:
            cpu = CpuMeter(env, proc)
            timing = await _watch(env, s, proc, messages, [], cpu.start)
            await cpu.stop()
            after = await commandstats.snapshot(env.redis)
            peak = proc.peak_rss()
        await verify(env, s, messages, [])
    finally:
        await cleanup(env, queue)
    metrics = _drain_metrics(timing, peak, cpu)
    metrics.update(commandstats.per_message(before, after, messages))
    return metrics


async def _celery_payloads(
    env: Env, queue: str, sink: Any, messages: int
) -> list[bytes]:
    """``messages`` Celery messages ``sink(i)``, as kombu's Redis transport has them.

    One real ``apply_async`` gives the envelope; the others copy it with
    their own ids, body and delivery tag (pre-loading 20,000 messages
    through ``apply_async`` would take ~20 s per run; this takes ~0.5 s).
    """
    await asyncio.to_thread(sink.apply_async, args=(0,))
    key = celery_app.queue_key(queue)
    raw = await env.redis.rpop(key)
    if raw is None:
        raise BenchError("celery's message did not reach the queue")
    template = json.loads(as_text(raw))
    body_tail = json.loads(base64.b64decode(template["body"]))[1:]
    payloads: list[bytes] = []
    for item in range(messages):
        message = copy.deepcopy(template)
        task_id = str(uuid.uuid4())
        body = json.dumps([[item], *body_tail]).encode()
        message["body"] = base64.b64encode(body).decode()
        message["headers"].update(id=task_id, root_id=task_id, argsrepr=f"({item},)")
        message["properties"].update(
            correlation_id=task_id, delivery_tag=str(uuid.uuid4())
        )
        payloads.append(json.dumps(message).encode())
    return payloads


async def celery_drain(env: Env, label: str, messages: int) -> Metrics:
    """celery-batches (solo pool, prefetch 200, flush_every 100), MSET sink."""
    queue = env.queue(label)
    app, sink = celery_app.make_app(env.redis_url, queue)
    try:
        payloads = await _celery_payloads(env, queue, sink, messages)
        await preload(env.redis, celery_app.queue_key(queue), "list", payloads)
        del payloads
        argv = celery_app.worker_argv(sys.executable)
        environ = {"TBB_REDIS_URL": env.redis_url, "TBB_QUEUE": queue}
        before = await commandstats.snapshot(env.redis)
        with started(argv, environ, env.log(queue), label) as proc:
            probe = celery_probe(
                env.redis,
                celery_app.queue_key(queue),
                celery_app.unacked_key(queue),
                messages,
            )
            cpu = CpuMeter(env, proc)
            try:
                timing = await watch_drain(
                    probe,
                    messages,
                    drain_timeout(messages),
                    proc.alive,
                    on_start=cpu.start,
                )
            except BenchError as exc:
                raise BenchError(f"{exc}\n{proc.output()}") from None
            await cpu.stop()
            after = await commandstats.snapshot(env.redis)
            peak = proc.peak_rss()
        s = env.settings(queue, sink="mset", results=False)
        await verify(env, s, messages, [])
    finally:
        app.close()
        await cleanup(env, queue)
    metrics = _drain_metrics(timing, peak, cpu)
    metrics.update(commandstats.per_message(before, after, messages))
    return metrics


async def _paced(
    env: Env, app: App, rate: float, count: int, bulk: bool, first: int = 0
) -> dict[str, float]:
    """Send ``count`` messages ``work(i)`` at ``rate`` per second.

    ``bulk=False``: one ``await task.kiq(i)`` at a time, each at its slot
    (one producer coroutine: its own cost caps the rate near 2,000/s here).
    ``bulk=True``: the messages, encoded beforehand exactly as ``kiq`` does,
    go out every ``BULK_TICK`` seconds: those due so far, in one script
    call (``XADD_EACH``) — any rate the worker can take, with a single
    producer.
    Returns each task_id's send time (``time.time()`` just before sending).
    """
    sent: dict[str, float] = {}
    if not bulk:
        start = time.monotonic() + 0.05
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.time()
            handle = await app.task.kiq(first + index)
            sent[handle.task_id] = at
        return sent
    payloads, task_ids = messages_for(app, count, first)
    queue = app.settings.queue
    xadd_each = env.redis.register_script(XADD_EACH)
    # The schedule starts once the messages are encoded: encoding tens of
    # thousands takes seconds, which would otherwise go out as one burst.
    start = time.monotonic() + 0.05
    index = 0
    while index < count:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(max(delay, BULK_TICK))
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        at = time.time()
        await xadd_each(keys=[queue], args=payloads[index:due])
        for task_id in task_ids[index:due]:
            sent[task_id] = at
        index = due
    return sent


async def _saved(env: Env, queue: str) -> dict[str, float]:
    saved: dict[str, float] = {}
    for entry in await env.redis.lrange(f"{queue}:saved", 0, -1):
        task_id, at = as_text(entry).split()
        saved[task_id] = float(at)
    return saved


async def taskiq_latency(
    env: Env,
    label: str,
    rate: float,
    duration: float,
    bulk: bool = False,
    **values: Any,
) -> Metrics:
    """Enqueue-to-result latency at a fixed send rate.

    The producer (this process) sends ``rate`` messages/s for ``duration``
    seconds after a one-second warm-up (see ``_paced`` for ``bulk``); the
    worker's ``post_save`` middleware records when each result was stored.
    Latency = stored - sent, per message.
    """
    queue = env.queue(label)
    s = env.settings(queue, latency=True, **values)
    app = build(s)
    try:
        await create_group(env.redis, queue)
        argv = taskiq_worker_argv("bench.taskiq_worker:broker")
        with started(argv, s.to_env(), env.log(queue), label) as proc:
            await app.broker.startup()
            try:
                warm = await _paced(env, app, rate, max(5, int(rate)), bulk)
                await wait_for(
                    lambda: _len_at_least(env, f"{queue}:saved", len(warm)),
                    60 + s.batch_timeout,
                    "the warm-up results (worker start)",
                )
                await asyncio.sleep(0.2)  # the reporter's last push
                sizes_before = int(await env.redis.llen(f"{queue}:sizes"))
                count = max(1, int(rate * duration))
                sent = await _paced(env, app, rate, count, bulk, first=len(warm))
                await wait_for(
                    lambda: _len_at_least(env, f"{queue}:saved", len(warm) + len(sent)),
                    60 + s.batch_timeout,
                    "the results",
                )
                await asyncio.sleep(0.2)
                peak = proc.peak_rss()
            finally:
                await app.broker.shutdown()
        saved = await _saved(env, queue)
        sizes = (await batch_sizes(env, queue))[sizes_before:]
    finally:
        await cleanup(env, queue)
    latencies = [saved[task_id] - at for task_id, at in sent.items()]
    metrics: Metrics = {
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        # Over the sending schedule (encoding the messages beforehand excluded).
        "sent_rate": (len(sent) - 1)
        / max(max(sent.values()) - min(sent.values()), 1e-3),
        "samples": len(latencies),
        "peak_rss_mb": peak / MB,
    }
    if sizes:
        metrics["fill"] = statistics.fmean(sizes) / s.batch_size
    return metrics


async def _len_at_least(env: Env, key: str, count: int) -> bool:
    return int(await env.redis.llen(key)) >= count


async def producer_rate(
    env: Env, label: str, messages: int, many: int = 0, **values: Any
) -> Metrics:
    """Sequential ``await task.kiq(i)`` from one coroutine, no worker running.

    With ``many``: ``await task.kiq_many(chunk)`` with chunks of ``many``
    items (taskiq_batching's bulk send), when the task has it.
    """
    queue = env.queue(label)
    s = env.settings(queue, **values)
    app = build(s)
    sender = app.task
    if many:
        typed = getattr(taskiq_batching, "BatchedTask", None)
        if typed is None or not hasattr(typed, "kiq_many"):
            raise BenchError("this taskiq_batching has no kiq_many")
        sender = typed(app.task)
    try:
        await app.broker.startup()
        try:
            for item in range(min(100, messages)):  # warm-up
                await app.task.kiq(item)
            began = time.monotonic()
            if many:
                for start in range(0, messages, many):
                    await sender.kiq_many(range(start, min(messages, start + many)))
            else:
                for item in range(messages):
                    await app.task.kiq(item)
            seconds = time.monotonic() - began
        finally:
            await app.broker.shutdown()
    finally:
        await cleanup(env, queue)
    return {"rate": messages / seconds}


async def buffered_memory(
    env: Env, label: str, messages: int, warm: int = 100
) -> Metrics:
    """RSS per message held in a buffer.

    A batched no-op worker (batch_size 20,000, batch_timeout 600 s) takes
    ``warm`` messages (so one-time costs are paid), its RSS is read; then
    ``messages`` more, all of which wait in the buffer; RSS again.
    """
    queue = env.queue(label)
    s = env.settings(queue, batched=True, batch_size=20_000, batch_timeout=600.0)
    if warm + messages >= s.batch_size:
        raise ValueError("the buffer must not flush")
    app = build(s)
    try:
        await create_group(env.redis, queue)
        argv = taskiq_worker_argv("bench.taskiq_worker:broker")
        with started(argv, s.to_env(), env.log(queue), label) as proc:
            probe = stream_probe(env.redis, queue)

            async def taken(count: int) -> bool:
                progress = await probe()
                return progress.taken >= count and progress.done == 0

            payloads, _ = messages_for(app, warm + messages)
            await preload(env.redis, queue, "stream", payloads[:warm])
            await wait_for(lambda: taken(warm), 60, "the warm-up (worker start)")
            await asyncio.sleep(1.0)
            before = await _settled_rss(proc)
            await preload(env.redis, queue, "stream", payloads[warm:])
            del payloads
            await wait_for(lambda: taken(warm + messages), 60, "the messages")
            await asyncio.sleep(1.0)
            after = await _settled_rss(proc)
            if (await probe()).done:
                raise BenchError("a buffered message was acked: the buffer flushed")
    finally:
        await cleanup(env, queue)
    return {
        "bytes_per_message": (after - before) / messages,
        "idle_rss_mb": before / MB,
        "held_rss_mb": after / MB,
    }


async def _settled_rss(proc: Proc) -> int:
    """RSS once two readings 200 ms apart agree within 1%."""
    previous = proc.rss()
    for _ in range(25):
        await asyncio.sleep(0.2)
        current = proc.rss()
        if abs(current - previous) <= previous / 100:
            return current
        previous = current
    return previous


async def profiled_drain(
    env: Env, label: str, messages: int, out: Path, **values: Any
) -> Metrics:
    """A drain with the worker running under pyinstrument (bench.profile_worker).

    The worker runs in the process that is started (no child process);
    after the drain it gets SIGTERM, stops, and writes ``out``.{txt,html,json}.
    """
    queue = env.queue(label)
    s = env.settings(queue, **values)
    app = build(s)
    try:
        await create_group(env.redis, queue)
        payloads, task_ids = messages_for(app, messages)
        await preload(env.redis, queue, s.broker, payloads)
        del payloads
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
        with started(argv, s.to_env(), env.log(queue), label) as proc:
            timing = await _watch(env, s, proc, messages, task_ids)
            proc.process.terminate()
            try:
                await asyncio.to_thread(proc.process.wait, 120)
            except Exception as exc:
                raise BenchError(f"the profiled worker did not stop: {exc!r}") from None
        if not out.with_suffix(".json").exists():
            raise BenchError(f"no profile written:\n{proc.output()}")
    finally:
        await cleanup(env, queue)
    return {"rate": timing.rate}
