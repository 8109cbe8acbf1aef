"""The four-broker table: plain vs batched no-op drains on every broker, one table.

Each row pairs a broker's plain and batched drains of the same rounds
(``plain-stream``/``batched-stream`` and so on); a ratio is the median of
the ratios measured within each round. "msg per CPU-s" is the drain rate
divided by the worker's CPU (cores used during the drain): steadier than
wall rates on a shared machine, where a worker may wait for a core. The
profiles of the batched RabbitMQ and NATS workers (``broker_runs``) follow.
"""

from pathlib import Path
from typing import Any

from bench import profile_owners
from bench.figures import cell, paired, stat, values
from bench.suite import Results

#: (broker, plain workload, batched workload, profiled kind or None).
ROWS = [
    ("Redis stream (RedisStreamBroker)", "plain-stream", "batched-stream", None),
    ("Redis list (ListQueueBroker)", "plain-list", "batched-list", None),
    ("RabbitMQ (taskiq-aio-pika AioPikaBroker)", "plain-amqp", "batched-amqp", "amqp"),
    (
        "NATS JetStream (taskiq-nats PullBasedJetStreamBroker)",
        "plain-nats",
        "batched-nats",
        "nats",
    ),
]
#: The goal per broker: batched ≥ this many times plain (per worker CPU-second) ...
RATIO_GOAL = 10.0
#: ... or the broker's client library this share of the batched worker's time.
CLIENT_GOAL = 0.75


def markdown(results: Results) -> list[str]:
    """The table and the profiles, as Markdown lines (none if nothing ran)."""
    rows = [row for row in ROWS if row[1] in results.runs or row[2] in results.runs]
    if not rows:
        return []
    out = [
        "### All four brokers (no-op task, results on, one worker process)",
        "",
        "| broker | plain msg/s | batched msg/s | batched / plain "
        "| plain msg per CPU-s | batched msg per CPU-s | batched / plain per CPU "
        "| worker CPU plain / batched | broker server CPU plain / batched |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, plain, batched, _ in rows:
        figures = [
            cell(stat(values(results, plain, "rate"))),
            cell(stat(values(results, batched, "rate"))),
            cell(stat(paired(results, batched, plain, "rate"))),
            cell(stat(values(results, plain, "rate_per_cpu"))),
            cell(stat(values(results, batched, "rate_per_cpu"))),
            cell(stat(paired(results, batched, plain, "rate_per_cpu"))),
            _pair(results, plain, batched, "worker_cpu"),
            _pair(results, plain, batched, "broker_cpu"),
        ]
        out.append(f"| {name} | " + " | ".join(figures) + " |")
    out.append("")
    for name, plain, batched, kind in rows:
        if kind is not None:
            out.extend(_verdict(results, name, plain, batched, kind))
    return out


def _pair(results: Results, plain: str, batched: str, metric: str) -> str:
    left = stat(values(results, plain, metric))
    right = stat(values(results, batched, metric))
    if left is None and right is None:
        return "-"
    show = [f"{s.median:.2f}" if s is not None else "-" for s in (left, right)]
    return " / ".join(show)


def _verdict(
    results: Results, name: str, plain: str, batched: str, kind: str
) -> list[str]:
    ratio = stat(paired(results, batched, plain, "rate"))
    per_cpu = stat(paired(results, batched, plain, "rate_per_cpu"))
    profile: dict[str, Any] | None = results.brokers.get(kind)
    client = None
    if profile is not None:
        owners = profile["owners"]
        client = owners.get(profile_owners.CLIENTS[kind], 0.0) / (profile["busy"] or 1)
    # Per CPU: on a shared machine a worker's wall rate is the CPU it was given.
    reached = (per_cpu is not None and per_cpu.median >= RATIO_GOAL) or (
        client is not None and client >= CLIENT_GOAL
    )
    line = (
        f"**{name}**: batched / plain {cell(per_cpu)} per worker CPU-second, "
        f"{cell(ratio)} in msg/s"
    )
    if client is not None:
        line += f"; the client library has {client:.1%} of the batched worker's time"
    goal = f"≥ {RATIO_GOAL:g} times plain, or the client library ≥ {CLIENT_GOAL:.0%}"
    lines = [f"{line} (goal: {goal}): **{'met' if reached else 'NOT met'}**.", ""]
    if profile is not None:
        lines.append(
            profile_owners.markdown(
                kind, profile["rate"], profile, Path(profile["prefix"])
            )
        )
    return lines
