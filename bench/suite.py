"""The workloads of one benchmark run, interleaved round by round.

Each round runs every drain workload once (in a shuffled order), then the
latency, memory and producer workloads. A figure is the median over the
rounds (min-max beside it); a ratio is the median of the ratios measured
within each round (both sides in the same round, minutes apart at most).
"""

import importlib.util
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import broker_runs, brokers, cgroups
from bench import workloads as w
from bench.measure import BenchError
from bench.workloads import Env, Metrics


@dataclass
class Options:
    messages: int
    rounds: int
    latency_seconds: float
    low_rate: float
    low_batch_timeout: float
    saturation: float
    memory_messages: int
    producer_messages: int
    profile_messages: int
    only: str | None = None
    #: Also the extra workloads (list broker, plain task with the middleware).
    extended: bool = False


FULL = Options(
    messages=20_000,
    rounds=3,
    latency_seconds=10,
    low_rate=10,
    low_batch_timeout=0.5,
    saturation=0.8,
    memory_messages=10_000,
    producer_messages=3_000,
    profile_messages=20_000,
)
QUICK = Options(
    messages=3_000,
    rounds=1,
    latency_seconds=3,
    low_rate=10,
    low_batch_timeout=0.5,
    saturation=0.8,
    memory_messages=2_000,
    producer_messages=1_000,
    profile_messages=0,
)


@dataclass
class Workload:
    name: str
    what: str
    run: Callable[[Env, Options, "Results"], Awaitable[Metrics]]
    needs: tuple[str, ...] = ()
    phase: str = "drain"
    #: Workloads whose figures of the same round this one uses.
    uses: tuple[str, ...] = ()
    #: Run only with ``--extended`` (or when named by ``--only``).
    extra: bool = False


@dataclass
class Results:
    """Every run's figures: ``runs[workload][round] = metrics`` (or error)."""

    runs: dict[str, list[Metrics | None]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    #: Profiles of the batched RabbitMQ and NATS workers, by broker kind.
    brokers: dict[str, Any] = field(default_factory=dict)
    round: int = 0

    def this_round(self, name: str, metric: str) -> float | None:
        """A figure of another workload measured earlier in this round."""
        runs = self.runs.get(name, [])
        if len(runs) > self.round and runs[self.round] is not None:
            value = runs[self.round]
            assert value is not None
            return value.get(metric)
        return None


#: Drains that take ``opts.messages`` in well under two seconds (the batched
#: workers and the transport limit) take this many times more, so that
#: start-up (the first read, the first batch) weighs as little as in the
#: plain drains. Rates, not times, are compared.
FAST_SCALE = 5


def _drain(
    label: str, scale: int = 1, **values: Any
) -> Callable[[Env, Options, Results], Awaitable[Metrics]]:
    async def run(env: Env, opts: Options, _: Results) -> Metrics:
        return await w.taskiq_drain(env, label, opts.messages * scale, **values)

    return run


def _drain_workers(
    workers: int, scale: int = 1, **values: Any
) -> Callable[[Env, Options, Results], Awaitable[Metrics]]:
    async def run(env: Env, opts: Options, _: Results) -> Metrics:
        return await w.taskiq_drain(
            env, f"w{workers}", opts.messages * scale, workers=workers, **values
        )

    return run


async def _transport(env: Env, opts: Options, _: Results) -> Metrics:
    return await w.transport_drain(env, "transport", opts.messages * FAST_SCALE)


async def _celery(env: Env, opts: Options, _: Results) -> Metrics:
    return await w.celery_drain(env, "celery", opts.messages)


def _low_rate(batched: bool) -> Callable[[Env, Options, Results], Awaitable[Metrics]]:
    async def run(env: Env, opts: Options, _: Results) -> Metrics:
        return await w.taskiq_latency(
            env,
            "lat-low",
            opts.low_rate,
            opts.latency_seconds,
            batched=batched,
            batch_timeout=opts.low_batch_timeout,
        )

    return run


def _saturated(
    batched: bool, drain: str, fraction: float | None = None
) -> Callable[[Env, Options, Results], Awaitable[Metrics]]:
    """Paced at ``fraction`` (default ``opts.saturation``) of a drain rate."""

    async def run(env: Env, opts: Options, results: Results) -> Metrics:
        capacity = results.this_round(drain, "rate")
        if capacity is None:
            raise BenchError(f"needs {drain} measured in the same round")
        rate = capacity * (opts.saturation if fraction is None else fraction)
        return await w.taskiq_latency(
            env,
            "lat-sat",
            rate,
            opts.latency_seconds / 2,
            bulk=True,
            batched=batched,
            batch_timeout=opts.low_batch_timeout,
        )

    return run


async def _memory(env: Env, opts: Options, _: Results) -> Metrics:
    return await w.buffered_memory(env, "memory", opts.memory_messages)


def _producer(
    batched: bool, many: int = 0
) -> Callable[[Env, Options, Results], Awaitable[Metrics]]:
    async def run(env: Env, opts: Options, _: Results) -> Metrics:
        # Bulk sends take ten times the messages: about as long as the others.
        messages = opts.producer_messages * (10 if many else 1)
        return await w.producer_rate(
            env, "producer", messages, many=many, batched=batched
        )

    return run


B = {"batched": True}
WORKLOADS = [
    Workload("plain-stream", "plain taskiq, no-op, stream, results on", _drain("p")),
    Workload(
        "plain-stream-nores",
        "plain taskiq, no-op, stream, results off",
        _drain("pn", results=False),
    ),
    Workload(
        "plain-list",
        "plain taskiq, no-op, list (ListQueueBroker), results on",
        _drain("pl", broker="list"),
        extra=True,
    ),
    Workload(
        "plain-stream-mw",
        "plain task on a broker with BatchingMiddleware, no-op, stream",
        _drain("pm", middleware=True),
        extra=True,
    ),
    Workload(
        "batched-stream",
        "taskiq_batching batch_size=100, no-op, stream, results on",
        _drain("b", FAST_SCALE, **B),
    ),
    Workload(
        "batched-stream-nores",
        "taskiq_batching batch_size=100, no-op, stream, results off",
        _drain("bn", FAST_SCALE, results=False, **B),
    ),
    Workload(
        "batched-list",
        "taskiq_batching batch_size=100, no-op, list, results on",
        _drain("bl", FAST_SCALE, broker="list", **B),
        extra=True,
    ),
    Workload(
        "batched-stream-saved",
        "as batched-stream, with a `post_save` middleware (the latency app)",
        _drain("bm", FAST_SCALE, latency=True, **B),
    ),
    Workload(
        "batched-stream-2w",
        "as batched-stream, `--workers 2` (two worker processes)",
        _drain_workers(2, FAST_SCALE, **B),
    ),
    Workload(
        "batched-stream-cap",
        "as batched-stream, the worker process capped at 0.5 core (cgroup)",
        _drain("bc", FAST_SCALE, cpu_cap=True, **B),
        needs=("cgroup",),
    ),
    Workload(
        "batched-stream-2w-cap",
        "as batched-stream-2w, the two worker processes capped at 1 core (cgroup)",
        _drain_workers(2, FAST_SCALE, cpu_cap=True, **B),
        needs=("cgroup",),
    ),
    # RabbitMQ and NATS JetStream (bench/brokers.py): the four-broker table.
    # In --extended (+7 min for 3 rounds), with the list broker's drains.
    Workload(
        "plain-amqp",
        "plain taskiq-aio-pika (quorum queue, qos 1000), no-op, results on",
        broker_runs.drain("amqp", batched=False),
        needs=("taskiq_aio_pika", "service:amqp"),
        extra=True,
    ),
    Workload(
        "batched-amqp",
        "taskiq_batching batch_size=100, no-op, RabbitMQ (qos 1000), results on",
        # 2x: pre-loading RabbitMQ is slow (~4,000 msg/s), its drain is not.
        broker_runs.drain("amqp", batched=True, scale=2),
        needs=("taskiq_aio_pika", "service:amqp"),
        extra=True,
    ),
    Workload(
        "plain-nats",
        "plain taskiq-nats PullBasedJetStreamBroker (fetch 100), no-op, results on",
        broker_runs.drain("nats", batched=False),
        needs=("taskiq_nats", "service:nats"),
        extra=True,
    ),
    Workload(
        "batched-nats",
        "taskiq_batching batch_size=100, no-op, NATS JetStream, results on",
        broker_runs.drain("nats", batched=True, scale=FAST_SCALE),
        needs=("taskiq_nats", "service:nats"),
        extra=True,
    ),
    # Cost of metrics (bench/metrics_app.py): compared with batched-stream,
    # measured in the same rounds (``uses``).
    Workload(
        "batched-stream-metrics",
        "as batched-stream, with taskiq's PrometheusMiddleware and "
        "PrometheusBatchMetrics (multiprocess files)",
        _drain("bmx", FAST_SCALE, metrics="both", **B),
        uses=("batched-stream",),
        extra=True,
    ),
    Workload(
        "batched-stream-batchmetrics",
        "as batched-stream, with PrometheusBatchMetrics only (multiprocess files)",
        _drain("bbm", FAST_SCALE, metrics="batch", **B),
        uses=("batched-stream",),
        extra=True,
    ),
    Workload(
        "batched-stream-taskiqprom",
        "as batched-stream, with taskiq's PrometheusMiddleware only",
        _drain("btp", FAST_SCALE, metrics="taskiq", **B),
        uses=("batched-stream",),
        extra=True,
    ),
    Workload(
        "plain-mset", "plain taskiq, Redis SET per item", _drain("pr", sink="mset")
    ),
    Workload(
        "batched-mset",
        "taskiq_batching, one Redis MSET per batch, results on",
        _drain("br", FAST_SCALE, sink="mset", **B),
    ),
    Workload(
        "batched-mset-nores",
        "taskiq_batching, one Redis MSET per batch, results off",
        _drain("brn", FAST_SCALE, sink="mset", results=False, **B),
    ),
    Workload(
        "celery-batches-mset",
        "celery-batches flush_every=100, solo, prefetch 200, MSET, late ack",
        _celery,
        needs=("celery", "celery_batches"),
    ),
    Workload(
        "transport-mset",
        "redis-py loop: XREADGROUP 100, taskiq decode, MSET, one XACK",
        _transport,
    ),
    Workload(
        "plain-pg",
        "plain taskiq, PostgreSQL INSERT per item (pool of 4)",
        _drain("pp", sink="pg"),
        needs=("asyncpg", "pg"),
    ),
    Workload(
        "batched-pg",
        "taskiq_batching, PostgreSQL COPY per batch (pool of 4)",
        _drain("bp", FAST_SCALE, sink="pg", **B),
        needs=("asyncpg", "pg"),
    ),
    Workload(
        "plain-sleep",
        "plain taskiq, synthetic 2 ms sink per item on one connection",
        _drain("ps", sink="sleep"),
    ),
    Workload(
        "batched-sleep",
        "taskiq_batching, synthetic 2 ms sink per batch on one connection",
        _drain("bs", FAST_SCALE, sink="sleep", **B),
    ),
    Workload(
        "latency-low-plain",
        "plain, 10 msg/s, one `kiq` per message",
        _low_rate(False),
        phase="latency",
    ),
    Workload(
        "latency-low-batched",
        "batched (size 100, timeout 0.5 s), 10 msg/s, `kiq`",
        _low_rate(True),
        phase="latency",
    ),
    Workload(
        "latency-sat-plain",
        "plain, 80% of this round's plain-stream drain rate, bulk sends",
        _saturated(False, "plain-stream"),
        phase="latency",
        uses=("plain-stream",),
    ),
    Workload(
        "latency-half-batched",
        "batched (100, 0.5 s), 50% of batched-stream-saved drain rate, bulk sends",
        _saturated(True, "batched-stream-saved", 0.5),
        phase="latency",
        uses=("batched-stream-saved",),
    ),
    Workload(
        "latency-sat-batched",
        "batched (100, 0.5 s), 80% of batched-stream-saved drain rate, bulk sends",
        _saturated(True, "batched-stream-saved"),
        phase="latency",
        uses=("batched-stream-saved",),
    ),
    Workload(
        "memory-buffered",
        "batched worker holding N messages in one buffer (size 20,000)",
        _memory,
        phase="memory",
    ),
    Workload(
        "producer-plain",
        "sequential `await task.kiq(i)`, plain task, stream",
        _producer(False),
        phase="producer",
    ),
    Workload(
        "producer-batched",
        "sequential `await task.kiq(i)`, batched task, stream",
        _producer(True),
        phase="producer",
    ),
    Workload(
        "producer-kiq-many",
        "`await task.kiq_many(items)`, 100 items per call, batched task, stream",
        _producer(True, many=100),
        phase="producer",
    ),
]
PHASES = ["drain", "latency", "memory", "producer"]


def available(workload: Workload, pg_ok: bool) -> str | None:
    """Why a workload cannot run here, or None."""
    for need in workload.needs:
        if need == "pg":
            if not pg_ok:
                return "PostgreSQL unreachable"
        elif need == "cgroup":
            reason = cgroups.unavailable()
            if reason:
                return reason
        elif need.startswith("service:"):
            reason = brokers.unreachable(need.partition(":")[2])
            if reason:
                return reason
        elif importlib.util.find_spec(need) is None:
            return f"{need} not installed (pip install -r bench/requirements.txt)"
    return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def run_all(env: Env, opts: Options, pg_ok: bool, seed: int) -> Results:
    """Every selected workload, ``opts.rounds`` times, interleaved."""
    import re

    if opts.only is None:
        names = {x.name for x in WORKLOADS if opts.extended or not x.extra}
    else:
        names = {x.name for x in WORKLOADS if re.search(opts.only, x.name)}
    names |= {used for x in WORKLOADS if x.name in names for used in x.uses}
    selected = [workload for workload in WORKLOADS if workload.name in names]
    results = Results()
    for workload in selected:
        reason = available(workload, pg_ok)
        if reason:
            results.skipped[workload.name] = reason
    chosen = [x for x in selected if x.name not in results.skipped]
    shuffle = random.Random(seed)
    for round_no in range(opts.rounds):
        results.round = round_no
        for phase in PHASES:
            batch = [x for x in chosen if x.phase == phase]
            if phase == "drain":
                shuffle.shuffle(batch)
            for workload in batch:
                await _one(env, opts, results, workload, round_no)
    return results


async def _one(
    env: Env, opts: Options, results: Results, workload: Workload, round_no: int
) -> None:
    runs = results.runs.setdefault(workload.name, [])
    log(f"round {round_no + 1}/{opts.rounds}: {workload.name} ...")
    began = time.monotonic()
    try:
        metrics = await workload.run(env, opts, results)
    except BenchError as exc:
        runs.append(None)
        results.errors.setdefault(workload.name, []).append(str(exc))
        log(f"  FAILED: {str(exc).splitlines()[0]}")
        return
    except Exception as exc:
        runs.append(None)
        results.errors.setdefault(workload.name, []).append(
            "".join(traceback.format_exception(exc))
        )
        log(f"  FAILED: {exc!r}")
        return
    runs.append(metrics)
    # Per-command figures (``redis_usec:<command>``) are in the report only.
    shown = ", ".join(f"{k}={v:,.3g}" for k, v in metrics.items() if ":" not in k)
    log(f"  {time.monotonic() - began:.1f} s: {shown}")


async def run_profile(env: Env, opts: Options, out: Path, results: Results) -> None:
    """Profile a batched no-op worker draining ``profile_messages``."""
    if not opts.profile_messages:
        return
    if importlib.util.find_spec("pyinstrument") is None:
        results.skipped["profile"] = "pyinstrument not installed"
        return
    log(f"profile: batched no-op worker draining {opts.profile_messages:,} ...")
    try:
        metrics = await w.profiled_drain(
            env, "profile", opts.profile_messages, out, batched=True
        )
    except Exception as exc:
        results.errors["profile"] = [str(exc)]
        log(f"  FAILED: {exc!r}")
        return
    results.profile = {"rate": metrics["rate"], "prefix": str(out)}
    log(f"  profiled drain: {metrics['rate']:,.0f} msg/s -> {out}.txt")
