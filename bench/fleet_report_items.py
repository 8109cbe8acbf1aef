"""Issue 18 items 3 and 4 in ``python -m bench.fleet``'s report, paths side by side.

* ``rest_table``: with ``--drain`` and/or ``--idle``, per broker and N: the
  drain's msg/s per path and wait / today; the idle fleet's broker
  commands per second per worker and its CPU (% of a core per worker);
  plain tasks' p50/p99 send -> start while batches wait.
* ``keys_table``: with ``--keys``, per broker, rate and N: the whole fill,
  the worst key's and the keys' mean (each against its own ideal).
"""

import statistics
from typing import Any

#: (broker, rate asked, N, round of ``--repeat``).
Line = tuple[str, float, int, int]

REST = (
    "| broker | N | drain msg/s today | drain msg/s wait | wait / today "
    "| idle cmd/s/worker today | idle cmd/s/worker wait "
    "| idle CPU %/worker today | idle CPU %/worker wait "
    "| plain p50/p99 ms today | plain p50/p99 ms wait |"
)
KEYS = (
    "| broker | rate | N | keys | fill today | fill wait | worst key today "
    "| worst key wait | mean key today | mean key wait |"
)


def by_line(rows: list[dict[str, Any]]) -> dict[Line, dict[str, dict[str, Any]]]:
    """Rows by (broker, rate asked, N, round), then by path."""
    lines: dict[Line, dict[str, dict[str, Any]]] = {}
    for row in rows:
        rate, round_ = row.get("rate", 0.0), row.get("round", 0)
        line = (row["broker"], rate, row["workers"], round_)
        lines.setdefault(line, {})[row.get("path", "today")] = row
    return lines


def drain_ratio(today: dict[str, Any], wait: dict[str, Any]) -> float | None:
    """The wait path's drain rate over today's (None unless both drained)."""
    if not (today.get("drain") and wait.get("drain") and today.get("messages")):
        return None
    if not wait.get("messages"):
        return None
    return float(wait["sent_rate"]) / float(today["sent_rate"])


def rest_table(rows: list[dict[str, Any]]) -> list[str]:
    """Drain, idle cost and plain latency per broker and N (none if not run)."""
    if not any(row.get("drain") or "idle_cmds" in row for row in rows):
        return []
    out = [REST, "|" + "---|" * (REST.count("|") - 1)]
    for (broker, _, workers, _), paths in by_line(rows).items():
        today, wait = paths.get("today", {}), paths.get("wait", {})
        ratio = drain_ratio(today, wait)
        out.append(
            f"| {broker} | {workers} | {_drain(today)} | {_drain(wait)} "
            f"| {'—' if ratio is None else f'{ratio:.2f}x'} "
            f"| {_idle(today)} | {_idle(wait)} | {_cpu(today)} | {_cpu(wait)} "
            f"| {_plain(today)} | {_plain(wait)} |"
        )
    return out


def drain_pairs(rows: list[dict[str, Any]]) -> list[str]:
    """The drain's wait / today per broker and N over ``--repeat``'s pairs.

    One pair says little on a noisy machine (the same code gave 0.5-1.4x):
    each round runs both paths back to back, in alternating order, and the
    median of the rounds' ratios is the figure to read.
    """
    ratios: dict[tuple[str, int], list[float]] = {}
    for (broker, _, workers, _), paths in by_line(rows).items():
        ratio = drain_ratio(paths.get("today", {}), paths.get("wait", {}))
        if ratio is not None:
            ratios.setdefault((broker, workers), []).append(ratio)
    return [
        f"- drain wait / today, {broker} N = {workers}: median "
        f"{statistics.median(found):.2f}x over {len(found)} pair(s) "
        f"({min(found):.2f}-{max(found):.2f})"
        for (broker, workers), found in ratios.items()
        if len(found) > 1
    ]


def keys_table(rows: list[dict[str, Any]]) -> list[str]:
    """Whole, worst-key and mean-key fill per broker, rate and N (none if no keys)."""
    if not any("key_fill_worst" in row for row in rows):
        return []
    out = [KEYS, "|" + "---|" * (KEYS.count("|") - 1)]
    for (broker, rate, workers, _), paths in by_line(rows).items():
        today, wait = paths.get("today", {}), paths.get("wait", {})
        seen = int(max(today.get("keys_seen", 0), wait.get("keys_seen", 0)))
        rate_text = f"{rate:,.0f}" if rate else "drain"
        cells = [
            _figure(row, name)
            for name in ("fill", "key_fill_worst", "key_fill_mean")
            for row in (today, wait)
        ]
        out.append(
            f"| {broker} | {rate_text} | {workers} | {seen} | "
            + " | ".join(cells)
            + " |"
        )
    return out


def _figure(row: dict[str, Any], name: str) -> str:
    return f"{row[name]:.2f}" if name in row else "—"


def _drain(row: dict[str, Any]) -> str:
    if not (row.get("drain") and row.get("messages")):
        return "—"
    return f"{row['sent_rate']:,.0f}"


def _idle(row: dict[str, Any]) -> str:
    value = row.get("idle_cmds")
    return (
        "not measured"
        if value is None and "idle_cmds" in row
        else ("—" if value is None else f"{value:.2f}")
    )


def _cpu(row: dict[str, Any]) -> str:
    value = row.get("idle_cpu")
    return "—" if value is None else f"{100 * value:.1f}"


def _plain(row: dict[str, Any]) -> str:
    if "plain_p50_ms" not in row:
        return "—"
    return f"{row['plain_p50_ms']:.0f} / {row['plain_p99_ms']:.0f}"


def idle_notes(rows: list[dict[str, Any]], seconds: str) -> list[str]:
    """Which Redis commands an idle fleet sent (one line per broker, N, path)."""
    out = []
    for row in rows:
        names = row.get("idle_names")
        if not names:
            continue
        listed = ", ".join(
            f"{name.upper()} {count}"
            for name, count in sorted(names.items(), key=lambda kv: -kv[1])
        )
        out.append(
            f"- idle {row['broker']} N = {row['workers']} {row.get('path', 'today')}"
            f": {listed} (the fleet's, in {seconds} s)"
        )
    return out
