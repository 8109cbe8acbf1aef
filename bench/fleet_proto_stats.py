"""Figures and report of ``bench/fleet_proto.py`` (pure functions)."""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bench.fleet_proto_common import Batch, Config

COLUMNS = (
    "| mechanism | N | rate | mean batch | ideal | fill | min key fill | p50 ms "
    "| p99 ms | max ms | late | cmd/s/worker idle | cmd/s load | procs | drain msg/s |"
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill(
    batches: Sequence[Batch], batch_size: int, ideal_rate: float, t: float
) -> float:
    """Mean batch / min(batch_size, rate * batch_timeout) (0 if nothing)."""
    messages = sum(len(b.sent) for b in batches)
    ideal = min(float(batch_size), ideal_rate * t)
    if not batches or ideal <= 0:
        return 0.0
    return messages / len(batches) / ideal


def per_second(times: Sequence[float], start: float, end: float) -> float:
    """How many of ``times`` fall in [start, end), per second."""
    if end <= start:
        return 0.0
    return sum(start <= at < end for at in times) / (end - start)


def summarize(
    batches: Sequence[Batch],
    commands: dict[int, list[float]],
    cfg: Config,
    total: int,
    window: tuple[float, float, float, float],
    rate: float,
    late_ms: float = 50.0,
) -> dict[str, Any]:
    """One line's figures.

    :param window: (sending began, sending ended, idle from, idle to).
    :param rate: msg/s asked for; 0 for a pre-loaded drain.
    """
    began, ended, idle_from, idle_to = window
    received = sum(len(b.sent) for b in batches)
    sent_rate = total / max(ended - began, 1e-9) if rate else 0.0
    by_key: dict[str, list[Batch]] = defaultdict(list)
    for batch in batches:
        by_key[batch.key].append(batch)
    key_rate = sent_rate / max(1, cfg.keys)
    key_fills = [
        fill(group, cfg.batch_size, key_rate, cfg.batch_timeout)
        for group in by_key.values()
    ]
    waits = [(b.start - sent) * 1000 for b in batches for sent in b.sent]
    bound = cfg.batch_timeout * 1000 + late_ms
    workers = max(1, len(commands))
    last = max((b.start for b in batches), default=began)
    return {
        "rate": rate,
        "sent_rate": sent_rate,
        "messages": total,
        "received": received,
        "batches": len(batches),
        "mean_batch": received / max(1, len(batches)),
        "ideal": min(float(cfg.batch_size), sent_rate * cfg.batch_timeout),
        "fill": fill(batches, cfg.batch_size, sent_rate, cfg.batch_timeout),
        "min_key_fill": min(key_fills, default=0.0),
        "p50_ms": percentile(waits, 0.5),
        "p99_ms": percentile(waits, 0.99),
        "max_ms": max(waits, default=0.0),
        "late": sum(wait > bound for wait in waits),
        "idle_cmds": sum(
            per_second(times, idle_from, idle_to) for times in commands.values()
        )
        / workers,
        "load_cmds": sum(per_second(t, began, ended) for t in commands.values()),
        "procs": len({b.pid for b in batches}),
        "drain_rate": 0.0 if rate else total / max(last - began, 1e-9),
    }


def _line(row: dict[str, Any]) -> str:
    drain = f"{row['drain_rate']:,.0f}" if row["drain_rate"] else "-"
    rate = f"{row['sent_rate']:,.0f}" if row["rate"] else "drain"
    return (
        f"| {row['mechanism']} | {row['workers']} | {rate} "
        f"| {row['mean_batch']:.1f} | {row['ideal']:.0f} | {row['fill']:.2f} "
        f"| {row['min_key_fill']:.2f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} "
        f"| {row['max_ms']:.0f} | {row['late']} | {row['idle_cmds']:.2f} "
        f"| {row['load_cmds']:,.0f} | {row['procs']} | {drain} |"
    )


def kills(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per run with a kill -9: failover time, messages over/under."""
    return [
        f"- kill -9: {row['mechanism']} N={row['workers']}: next batch by another "
        f"process {row['failover_s']:.2f} s after the kill; received - sent = "
        f"{row['extra']} (+: ran twice, -: lost)"
        for row in rows
        if "failover_s" in row
    ]


def markdown(raw: dict[str, Any], head: bool = True) -> str:
    """The table (``head``: with its header and the run's settings)."""
    lines = [_line(row) for row in raw["rows"]]
    if not head:
        return "\n".join(lines + kills(raw["rows"]))
    args = raw["args"]
    intro = (
        f"Run {raw.get('run_id', '?')}: batch_size {args['batch_size']}, "
        f"batch_timeout {args['batch_timeout']} s, keys {args['keys']}, "
        f"{args['duration']} s per line, late = wait > batch_timeout + "
        f"{args['slack_ms']} ms; cmd/s load: the whole fleet's."
    )
    out = [intro, "", COLUMNS, "|" + "---|" * (COLUMNS.count("|") - 1), *lines]
    out += kills(raw["rows"])
    out += [f"- FAILED {error}" for error in raw.get("errors", [])]
    return "\n".join(out)
