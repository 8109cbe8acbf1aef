"""The figures and report of ``python -m bench.fleet``: markdown tables of its rows."""

from typing import Any

from bench.fleet_report_items import (
    by_line,
    drain_pairs,
    idle_notes,
    keys_table,
    rest_table,
)
from bench.measure import percentile

COLUMNS = (
    "| broker | N | rate | mean batch | ideal | fill | p50 ms | p99 ms "
    "| max ms | late | procs | worker cpu s | producer cpu s | busy | messages "
    "| path |"
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
    """Fill and wait figures from per-message ``[sent, size, start, pid, ...]``.

    :param records: one per message, as the batch function returned it
        (a fifth field, the key, is not read here: ``bench/fleet_keys.py``).
    :param rate: messages per second actually sent.
    :param slack: seconds a wait may exceed ``batch_timeout`` unreported.
    """
    if not records:
        return {"messages": 0}
    batches = sum(1 / record[1] for record in records)
    mean = len(records) / batches
    ideal = min(float(batch_size), rate * batch_timeout)
    waits = [(record[2] - record[0]) * 1000 for record in records]
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
        "procs": len({record[3] for record in records}),
    }


def row_line(row: dict[str, Any]) -> str:
    """One line of the detailed table (a broker, N, rate and path)."""
    if not row.get("messages"):
        return f"| {row['broker']} | {row['workers']} | no results |"
    return (
        f"| {row['broker']} | {row['workers']} | {_rate(row)} "
        f"| {row['mean_batch']:.1f} | {row['ideal']:.0f} | {row['fill']:.2f} "
        f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['max_ms']:.0f} "
        f"| {row['late']} | {row['procs']} | {_cpu(row)} | {_producer(row)} "
        f"| {_busy(row)} | {row['messages']:,} "
        f"| {row.get('path', 'today')} |"
    )


def side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    """Fill and waits of both paths per broker, rate and N (none if one path ran).

    :param rows: the run's rows.
    :return: the table's lines.
    """
    lines = by_line([row for row in rows if not row.get("drain")])
    if not any(len(paths) > 1 for paths in lines.values()):
        return []
    plain = any("wait-plain" in paths for paths in lines.values())
    head = SIDE_BY_SIDE + (PLAIN_COLUMNS if plain else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (broker, rate, workers, _), paths in lines.items():
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


def _producer(row: dict[str, Any]) -> str:
    """CPU seconds this producer used over the same window as the fleet's."""
    return f"{row['producer_cpu_s']:.1f}" if "producer_cpu_s" in row else "—"


def _busy(row: dict[str, Any]) -> str:
    """The machine's share busy (all cores) over that window, in percent."""
    return f"{100 * row['busy']:.0f}%" if "busy" in row else "—"


def _rate(row: dict[str, Any]) -> str:
    """The rate sent, after the one asked for when the producer lagged."""
    target, sent = row["rate"], row["sent_rate"]
    if row.get("drain"):
        return f"drain {sent:,.0f}"
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
        "last result (a drain's: from the workers' start, startup included), "
        "producer cpu s = this process's over the same window, busy = the "
        "machine's share of all its cores busy then (100%: saturated, every "
        "path waits for a core); "
        "path today = per-worker buffers, wait = batches wait in the broker, "
        "wait-plain = the same sent by a plain taskiq kicker (forwarded)."
        + (
            " CPU-capped: the worker processes share 0.5 core each (a cgroup)."
            if opts.get("cpu_cap") == "True"
            else ""
        ),
        "",
    ]
    for table in (side_by_side(raw["rows"]), rest_table(raw["rows"])):
        if table:
            out += [*table, ""]
    notes = drain_pairs(raw["rows"]) + idle_notes(raw["rows"], opts.get("idle", "?"))
    if notes:
        out += [*notes, ""]
    keyed = keys_table(raw["rows"])
    if keyed:
        out += [
            "Keys: fill against the whole rate's ideal; worst / mean key: each "
            "key's mean batch against its own ideal, min(batch_size, key rate "
            "* batch_timeout).",
            "",
            *keyed,
            "",
        ]
    out += [
        COLUMNS,
        "|" + "---|" * (COLUMNS.count("|") - 1),
    ]
    out += [row_line(row) for row in raw["rows"]]
    if raw["errors"]:
        out += ["", "Failures:", "", *[f"- {error}" for error in raw["errors"]]]
    return "\n".join(out)
