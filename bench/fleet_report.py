"""The figures and report of ``python -m bench.fleet``: markdown tables of its rows."""

from typing import Any

from bench.measure import percentile

COLUMNS = (
    "| broker | N | rate | mean batch | ideal | fill | p50 ms | p99 ms "
    "| max ms | late | procs | worker cpu s | messages | path |"
)
SIDE_BY_SIDE = (
    "| broker | rate | N | fill today | fill wait | p50/p99 ms today "
    "| p50/p99 ms wait |"
)


#: Columns of the ``wait-plain`` path (a plain kicker: the workers forward).
PLAIN_COLUMNS = " fill wait-plain | p50/p99 ms wait-plain |"


def summarize(
    records: list[list[float]],
    batch_size: int,
    batch_timeout: float,
    rate: float,
    slack: float,
) -> dict[str, float]:
    """Fill and wait figures from per-message ``[sent, size, start, pid]``.

    :param records: one per message, as the batch function returned it.
    :param rate: messages per second actually sent.
    :param slack: seconds a wait may exceed ``batch_timeout`` unreported.
    """
    if not records:
        return {"messages": 0}
    batches = sum(1 / size for _, size, _, _ in records)
    mean = len(records) / batches
    ideal = min(float(batch_size), rate * batch_timeout)
    waits = [(start - sent) * 1000 for sent, _, start, _ in records]
    bound = (batch_timeout + slack) * 1000
    return {
        "messages": len(records),
        "batches": batches,
        "mean_batch": mean,
        "ideal": ideal,
        "fill": mean / ideal if ideal else 0.0,
        "p50_ms": percentile(waits, 0.5),
        "p99_ms": percentile(waits, 0.99),
        "max_ms": max(waits),
        "late": sum(wait > bound for wait in waits),
        "procs": len({pid for *_, pid in records}),
    }


def row_line(row: dict[str, Any]) -> str:
    """One line of the detailed table (a broker, N, rate and path)."""
    if not row.get("messages"):
        return f"| {row['broker']} | {row['workers']} | no results |"
    return (
        f"| {row['broker']} | {row['workers']} | {_rate(row)} "
        f"| {row['mean_batch']:.1f} | {row['ideal']:.0f} | {row['fill']:.2f} "
        f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['max_ms']:.0f} "
        f"| {row['late']} | {row['procs']} | {_cpu(row)} | {row['messages']:,} "
        f"| {row.get('path', 'today')} |"
    )


def side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    """Fill and waits of both paths per broker, rate and N (none if one path ran).

    :param rows: the run's rows.
    :return: the table's lines.
    """
    lines: dict[tuple[str, float, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        line = (row["broker"], row.get("rate", 0.0), row["workers"])
        lines.setdefault(line, {})[row.get("path", "today")] = row
    if not any(len(paths) > 1 for paths in lines.values()):
        return []
    plain = any("wait-plain" in paths for paths in lines.values())
    head = SIDE_BY_SIDE + (PLAIN_COLUMNS if plain else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (broker, rate, workers), paths in lines.items():
        today, wait = paths.get("today", {}), paths.get("wait", {})
        text = (
            f"| {broker} | {rate:,.0f} | {workers} | {_fill(today)} "
            f"| {_fill(wait)} | {_waits(today)} | {_waits(wait)} |"
        )
        if plain:
            forwarded = paths.get("wait-plain", {})
            text += f" {_fill(forwarded)} | {_waits(forwarded)} |"
        out.append(text)
    return out


def _fill(row: dict[str, Any]) -> str:
    return f"{row['fill']:.2f}" if row.get("messages") else "—"


def _waits(row: dict[str, Any]) -> str:
    if not row.get("messages"):
        return "—"
    return f"{row['p50_ms']:.0f} / {row['p99_ms']:.0f}"


def _cpu(row: dict[str, Any]) -> str:
    """CPU seconds the fleet's processes used from the first send to the last result."""
    return f"{row['cpu_s']:.1f}" if "cpu_s" in row else "—"


def _rate(row: dict[str, Any]) -> str:
    """The rate sent, after the one asked for when the producer lagged."""
    target, sent = row["rate"], row["sent_rate"]
    if sent < 0.95 * target:
        return f"{target:,.0f} (sent {sent:,.0f})"
    return f"{sent:,.0f}"


def markdown(raw: dict[str, Any]) -> str:
    """The report: one line per broker, rate and N."""
    meta = raw["meta"]
    opts = meta["options"]
    out = [
        f"Fleet run `{raw['run_id']}`, {meta['date']}, nproc={meta['nproc']}, "
        f"code {meta['code']}; batch_size {opts['batch_size']}, batch_timeout "
        f"{opts['batch_timeout']} s, {opts['duration']} s of sending per line; "
        f"late = waits above batch_timeout + {opts['slack_ms']} ms; "
        "ideal from the rate sent; procs = worker processes that ran batches; "
        "worker cpu s = the fleet's CPU seconds from the first send to the "
        "last result; "
        "path today = per-worker buffers, wait = batches wait in the broker, "
        "wait-plain = the same sent by a plain taskiq kicker (forwarded).",
        "",
    ]
    table = side_by_side(raw["rows"])
    if table:
        out += [*table, ""]
    out += [
        COLUMNS,
        "|" + "---|" * (COLUMNS.count("|") - 1),
    ]
    out += [row_line(row) for row in raw["rows"]]
    if raw["errors"]:
        out += ["", "Failures:", "", *[f"- {error}" for error in raw["errors"]]]
    return "\n".join(out)
