"""Turn a run's figures into Markdown: tables, ratios vs targets, profile."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import broker_report, commandstats
from bench.figures import Stat, cell, fmt, paired, stat, values
from bench.suite import FAST_SCALE, WORKLOADS, Options, Results


@dataclass(frozen=True)
class Target:
    label: str
    top: str
    bottom: str | None  # None: a plain figure, not a ratio
    metric: str
    op: str
    bound: float

    def measure(self, results: Results) -> Stat | None:
        if self.bottom is None:
            return stat(values(results, self.top, self.metric))
        return stat(paired(results, self.top, self.bottom, self.metric))

    def met(self, s: Stat | None) -> str:
        if s is None:
            return "not measured"
        ok = s.median >= self.bound if self.op == ">=" else s.median <= self.bound
        return "**met**" if ok else "**NOT met**"


def targets(opts: Options) -> list[Target]:
    low_p99 = opts.low_batch_timeout * 1000 + 50
    return [
        Target(
            "batched no-op drain / plain (stream, results on)",
            "batched-stream",
            "plain-stream",
            "rate",
            ">=",
            5,
        ),
        Target(
            "batched no-op drain / plain (stream, results off)",
            "batched-stream-nores",
            "plain-stream-nores",
            "rate",
            ">=",
            5,
        ),
        Target(
            "batched no-op drain / plain (list broker)",
            "batched-list",
            "plain-list",
            "rate",
            ">=",
            5,
        ),
        Target(
            "~2 ms sink: batched / unbatched",
            "batched-sleep",
            "plain-sleep",
            "rate",
            ">=",
            20,
        ),
        Target(
            "MSET sink: batched (results on) / celery-batches",
            "batched-mset",
            "celery-batches-mset",
            "rate",
            ">=",
            3,
        ),
        Target(
            "MSET sink: batched (results off) / celery-batches",
            "batched-mset-nores",
            "celery-batches-mset",
            "rate",
            ">=",
            3,
        ),
        Target(
            f"p99 enqueue-to-result at {opts.low_rate:g} msg/s, ms "
            f"(batch_timeout {opts.low_batch_timeout:g} s + 50 ms)",
            "latency-low-batched",
            None,
            "p99_ms",
            "<=",
            low_p99,
        ),
        Target(
            "average batch fill, pre-loaded queue (saturated)",
            "batched-stream",
            None,
            "fill",
            ">=",
            0.9,
        ),
        Target(
            f"average batch fill, paced at {opts.saturation:.0%} of capacity",
            "latency-sat-batched",
            None,
            "fill",
            ">=",
            0.9,
        ),
        Target(
            "RSS per buffered message, bytes",
            "memory-buffered",
            None,
            "bytes_per_message",
            "<=",
            2048,
        ),
        Target(
            "kiq_many / sequential kiq (batched task)",
            "producer-kiq-many",
            "producer-batched",
            "rate",
            ">=",
            10,
        ),
        Target(
            "two worker processes / one (batched no-op)",
            "batched-stream-2w",
            "batched-stream",
            "rate",
            ">=",
            1.6,
        ),
        Target(
            "two worker processes / one, with 0.5 core per process (cgroup)",
            "batched-stream-2w-cap",
            "batched-stream-cap",
            "rate",
            ">=",
            1.6,
        ),
        Target(
            "(stretch) batched MSET, results off / transport limit",
            "batched-mset-nores",
            "transport-mset",
            "rate",
            ">=",
            0.4,
        ),
    ]


INFO_RATIOS = [
    (
        "two worker processes / one, per worker CPU-second (msg/s / worker CPU)",
        "batched-stream-2w",
        "batched-stream",
    ),
    # Cost of metrics (bench/metrics_app.py, docs/observability.md).
    (
        "batch metrics only / none, per worker CPU-second",
        "batched-stream-batchmetrics",
        "batched-stream",
    ),
    (
        "taskiq's PrometheusMiddleware + batch metrics / taskiq's only, "
        "per worker CPU-second",
        "batched-stream-metrics",
        "batched-stream-taskiqprom",
    ),
    (
        "taskiq's PrometheusMiddleware + batch metrics / none, per worker CPU-second",
        "batched-stream-metrics",
        "batched-stream",
    ),
    (
        "batch metrics only / none (msg/s)",
        "batched-stream-batchmetrics",
        "batched-stream",
    ),
    ("MSET sink: batched / plain (results on)", "batched-mset", "plain-mset"),
    ("PostgreSQL sink: batched COPY / plain INSERT", "batched-pg", "plain-pg"),
    ("celery-batches / plain taskiq no-op", "celery-batches-mset", "plain-stream"),
    (
        "batched no-op (results on) / transport limit",
        "batched-stream",
        "transport-mset",
    ),
    (
        "batched with a post_save middleware / without",
        "batched-stream-saved",
        "batched-stream",
    ),
    ("plain taskiq no-op / transport limit", "plain-stream-nores", "transport-mset"),
    ("plain task with BatchingMiddleware / without", "plain-stream-mw", "plain-stream"),
    ("stream / list broker, plain", "plain-stream", "plain-list"),
]


def markdown(results: Results, opts: Options, meta: dict[str, Any]) -> str:
    out = _header(opts, meta)
    out += _drains(results)
    out.extend(broker_report.markdown(results))
    out += _latency(results) + _memory(results, opts) + _producer(results)
    out += _ratios(results, opts)
    if results.profile:
        out.append(
            profile_markdown(Path(results.profile["prefix"]), results.profile["rate"])
        )
    out += _skipped_and_failed(results)
    return "\n".join(out)


def _header(opts: Options, meta: dict[str, Any]) -> list[str]:
    return [
        f"Run `{meta['run_id']}`, {meta['date']}, nproc={meta['nproc']}, "
        f"{meta['python']}, taskiq {meta['taskiq']}, taskiq-redis "
        f"{meta['taskiq_redis']}, redis-py {meta['redis_py']}, Redis "
        f"{meta['redis_server']}, celery {meta.get('celery', '-')}, "
        f"celery-batches {meta.get('celery_batches', '-')}; taskiq_batching "
        f"at {meta['code']}.",
        f"{opts.rounds} round(s); {opts.messages:,} messages per drain "
        f"({opts.messages * FAST_SCALE:,} for the batched and transport drains); "
        f"total wall time {meta['seconds'] / 60:.1f} min. Figures: median "
        "(min\u2013max) over the rounds.",
        "",
    ]


def _drains(results: Results) -> list[str]:
    drains = [w for w in WORKLOADS if w.phase == "drain" and w.name in results.runs]
    if not drains:
        return []
    out = [
        "### Drain (pre-loaded queue, one worker process unless noted)",
        "",
        "| workload | what | msg/s | peak RSS MB | batch fill "
        "| worker CPU | Redis CPU | Redis µs/msg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in drains:
        figures = " | ".join(
            cell(stat(values(results, w.name, metric)), digits)
            for metric, digits in (
                ("rate", 3),
                ("peak_rss_mb", 3),
                ("fill", 3),
                ("worker_cpu", 2),
                ("redis_cpu", 2),
                (commandstats.USEC, 3),
            )
        )
        out.append(f"| {w.name} | {w.what} | {figures} |")
    out.append("")
    out.extend(commandstats.markdown({w.name: results.runs[w.name] for w in drains}))
    return out


def _latency(results: Results) -> list[str]:
    lat = [w for w in WORKLOADS if w.phase == "latency" and w.name in results.runs]
    if not lat:
        return []
    out = [
        "### Enqueue-to-result latency (paced producer, stream, results on)",
        "",
        "| workload | what | sent msg/s | p50 ms | p99 ms | max ms | batch fill |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in lat:
        out.append(
            f"| {w.name} | {w.what} | "
            + " | ".join(
                cell(stat(values(results, w.name, metric)))
                for metric in ("sent_rate", "p50_ms", "p99_ms", "max_ms", "fill")
            )
            + " |"
        )
    return [*out, ""]


def _memory(results: Results, opts: Options) -> list[str]:
    if "memory-buffered" not in results.runs:
        return []
    return [
        "### Memory per buffered message",
        "",
        f"{opts.memory_messages:,} messages held in one buffer: "
        f"{cell(stat(values(results, 'memory-buffered', 'bytes_per_message')))}"
        " bytes per message (RSS "
        f"{cell(stat(values(results, 'memory-buffered', 'idle_rss_mb')))} MB "
        "→ "
        f"{cell(stat(values(results, 'memory-buffered', 'held_rss_mb')))} MB).",
        "",
    ]


def _producer(results: Results) -> list[str]:
    prods = [w for w in WORKLOADS if w.phase == "producer" and w.name in results.runs]
    if not prods:
        return []
    out = ["### Producer", "", "| workload | what | kiq/s |", "|---|---|---|"]
    for w in prods:
        rate = cell(stat(values(results, w.name, "rate")))
        out.append(f"| {w.name} | {w.what} | {rate} |")
    return [*out, ""]


def _ratios(results: Results, opts: Options) -> list[str]:
    out = [
        "### Ratios vs targets (median of per-round ratios, min\u2013max)",
        "",
        "| ratio / figure | target | measured | |",
        "|---|---|---|---|",
    ]
    for target in targets(opts):
        s = target.measure(results)
        out.append(
            f"| {target.label} | {target.op} {fmt(target.bound)} | {cell(s)} | "
            f"{target.met(s)} |"
        )
    out += ["", "Other ratios (same rounds):", "", "| ratio | measured |", "|---|---|"]
    for label, top, bottom in INFO_RATIOS:
        metric = "rate_per_cpu" if "CPU-second" in label else "rate"
        s = stat(paired(results, top, bottom, metric))
        if s is not None:
            out.append(f"| {label} | {cell(s)} |")
    return [*out, ""]


def _skipped_and_failed(results: Results) -> list[str]:
    out: list[str] = []
    if results.skipped:
        skipped = "; ".join(f"{k} ({v})" for k, v in results.skipped.items())
        out += ["Skipped: " + skipped, ""]
    if results.errors:
        out += ["Failures:", ""]
        for name, errors in results.errors.items():
            for error in errors:
                first = error.strip().splitlines()[0] if error.strip() else "?"
                out.append(f"- {name}: {first}")
        out.append("")
    return out


#: Where a worker's time goes: (label, function, where its file is).
#: Centres of code that is not there (an older or newer taskiq_batching)
#: measure 0 and are left out.
COST_CENTRES = [
    ("stream read: taskiq-redis listen (XREADGROUP)", "listen", "taskiq_redis:"),
    ("stream read: packed XREADGROUP (fetch)", "_stream_chunks", "taskiq_batching:"),
    ("- entries from the reply (fetch._deliveries)", "_deliveries", "taskiq_batching:"),
    ("taskiq_batching pump: route each delivery", "_pump", "taskiq_batching:"),
    ("- message decode (decode.decode)", "decode", "taskiq_batching:"),
    ("- message decode (taskiq formatter.loads)", "loads", "taskiq:"),
    ("- accept into a buffer (direct.accept)", "accept", "taskiq_batching:"),
    ("batch: call and finish (engine _run)", "_run", "taskiq_batching:"),
    ("- finish: middlewares, results, acks", "finish", "taskiq_batching:"),
    ("- results, one pipeline (bulk.store_many)", "store_many", "taskiq_batching:"),
    ("- acks, one XACK per stream (bulk.ack_many)", "ack_many", "taskiq_batching:"),
    ("taskiq per-message callback (Receiver.callback)", "callback", "taskiq:"),
    ("per-message result write (taskiq-redis)", "set_result", "taskiq_redis:"),
    ("per-message ack (taskiq-redis XACK closure)", "_ack", "taskiq_redis:"),
    ("new redis.asyncio.Redis per command", "__init__", "redis:client.py"),
    ("redis-py reply parsing (RESP3 parser)", "read_response", "redis:resp3.py"),
]


def cost_centres(inclusive: dict[str, float]) -> list[tuple[str, float]]:
    """Inclusive time of the functions that make up a worker's costs.

    Of several functions with that name in that file (nested ``__init__``),
    the outermost (largest) one.
    """
    found = []
    for label, function, where in COST_CENTRES:
        seconds = max(
            (
                value
                for name, value in inclusive.items()
                if name.startswith(function + " (") and f"({where}" in name
            ),
            default=0.0,
        )
        found.append((label, seconds))
    return found


def profile_markdown(prefix: Path, rate: float, top: int = 20) -> str:
    data = json.loads(prefix.with_suffix(".json").read_text())
    total = data["total"]
    lines = [
        "### Profile of a batched no-op worker (pyinstrument)",
        "",
        f"Drain under the profiler: {rate:,.0f} msg/s; {total:.1f} s sampled. "
        f"Call tree: `{prefix.with_suffix('.txt')}`.",
        "",
        "| share of worker time | cost centre (callees included) |",
        "|---|---|",
    ]
    for label, seconds in cost_centres(data["inclusive"]):
        if seconds / total >= 0.001:
            lines.append(f"| {seconds / total:.1%} | {label} |")
    lines += ["", "| self time | package |", "|---|---|"]
    for name, seconds in sorted(data["packages"].items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"| {seconds / total:.1%} | {name} |")
    lines += ["", "| self time | function |", "|---|---|"]
    for name, seconds in sorted(data["functions"].items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {seconds / total:.1%} | `{name}` |")
    lines += ["", "| incl. time | function (callees included) |", "|---|---|"]
    for name, seconds in sorted(data["inclusive"].items(), key=lambda kv: -kv[1])[
        : top + 10
    ]:
        lines.append(f"| {seconds / total:.1%} | `{name}` |")
    lines.append("")
    return "\n".join(lines)
