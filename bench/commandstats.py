"""Redis's own time per message, from ``INFO commandstats`` before and after a drain.

Redis counts, per command, its calls and the microseconds it spent running
them (``usec``: the command's execution only, not reading or parsing it).
The difference of two snapshots, divided by the messages drained, is what
each kind of command cost the server per message (``redis_usec:<command>``)
and in all (``redis_usec``) — the figure that decides how many workers one
Redis can serve.

Two rules keep the total honest:

* Commands the benchmark itself sends while it watches (``OBSERVER``: its
  polls and ``INFO``) are left out of everything.
* A command run by a script (``EVAL``/``EVALSHA``/``FCALL``) or inside
  ``MULTI``/``EXEC`` is counted by Redis twice: under its own name and in
  the time of the script or ``EXEC`` around it. ``MULTI``/``EXEC`` are
  therefore left out of the total (their commands are counted). Scripts
  are counted, and the commands taskiq_batching's scripts ran
  (``SCRIPTED``: ``XREADGROUP``, ``SET``) are left out as run by them
  when the scripts' time can hold them (largest first): Redis cannot say
  which calls a script made, and a script's time holds its commands' in
  full. (taskiq-redis's own scripts, a lock's, are far shorter than the
  ``SET`` of a result per message, which then count.) Those commands are
  still listed per command, marked (``redis_nested:<command>``).

The counters are server-wide: measure on a Redis no one else uses meanwhile.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Commands the benchmark's probes and meters send during a drain.
OBSERVER = frozenset(
    {"info", "xinfo|groups", "xinfo", "llen", "hlen", "exists", "ping", "config|get"}
)
#: Commands that run scripts: their time includes the commands they call.
SCRIPTS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
#: Transactions: EXEC's time includes the commands queued in it.
TRANSACTIONS = frozenset({"multi", "exec"})
#: Commands run by scripts (taskiq_batching's packed read and result scripts
#: before they were dropped): inside a script's time when a script ran.
SCRIPTED = frozenset({"xreadgroup", "set"})
#: Prefix of the per-command figures in a workload's metrics.
USEC = "redis_usec"
CALLS = "redis_calls"
NESTED = "redis_nested"


@dataclass(frozen=True)
class Counter:
    """One command's totals since the server started (or its stats were reset)."""

    calls: int
    usec: int


Snapshot = dict[str, Counter]


async def snapshot(redis: Any) -> Snapshot:
    """Every command's calls and microseconds so far.

    :param redis: a ``redis.asyncio.Redis`` client of the measured server.
    :return: counters by lower-case command name (``xinfo|groups`` for
        subcommands, as Redis 7 names them).
    """
    stats: dict[str, Any] = await redis.info("commandstats")
    return parse(stats)


def parse(stats: Mapping[str, Any]) -> Snapshot:
    """Counters from redis-py's parsed ``INFO commandstats``.

    :param stats: ``{"cmdstat_set": {"calls": ..., "usec": ...}, ...}``.
    :return: counters by lower-case command name.
    """
    found: Snapshot = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_").lower()
        if isinstance(value, Mapping) and "calls" in value and "usec" in value:
            found[name] = Counter(int(value["calls"]), int(value["usec"]))
    return found


def per_message(before: Snapshot, after: Snapshot, messages: int) -> dict[str, float]:
    """What the server spent per message between two snapshots.

    :param before: the snapshot taken before the drain.
    :param after: the snapshot taken after it.
    :param messages: the messages drained in between (> 0).
    :return: ``redis_usec`` (the total, see the module's rules) and, for
        each command sent in between, ``redis_usec:<name>`` (microseconds
        per message), ``redis_calls:<name>`` (calls per message) and, for
        one left out of the total, ``redis_nested:<name>`` (1.0).
    """
    if messages <= 0:
        raise ValueError("messages must be positive")
    delta: dict[str, Counter] = {}
    for name, now in after.items():
        then = before.get(name, Counter(0, 0))
        calls, usec = now.calls - then.calls, now.usec - then.usec
        if calls > 0 and name not in OBSERVER:
            delta[name] = Counter(calls, usec)
    inside = _nested(delta)
    figures: dict[str, float] = {USEC: 0.0}
    for name, counter in sorted(delta.items()):
        each = counter.usec / messages
        figures[f"{USEC}:{name}"] = each
        figures[f"{CALLS}:{name}"] = counter.calls / messages
        if name in inside:
            figures[f"{NESTED}:{name}"] = 1.0
        else:
            figures[USEC] += each
    return figures


def commands(metrics: Mapping[str, float]) -> dict[str, float]:
    """The per-command figures (µs per message) among a workload's metrics.

    :param metrics: one run's metrics.
    :return: µs per message by command name.
    """
    prefix = f"{USEC}:"
    return {
        key.removeprefix(prefix): value
        for key, value in metrics.items()
        if key.startswith(prefix)
    }


def _nested(delta: Mapping[str, Counter]) -> set[str]:
    """The commands whose time is inside another's (see the module's rules)."""
    inside = {name for name in delta if name in TRANSACTIONS}
    budget = sum(delta[name].usec for name in delta if name in SCRIPTS)
    by_time = sorted(SCRIPTED & delta.keys(), key=lambda name: -delta[name].usec)
    for name in by_time:
        if delta[name].usec <= budget:
            inside.add(name)
            budget -= delta[name].usec
    return inside


def markdown(runs: Mapping[str, list[dict[str, float] | None]]) -> list[str]:
    """A table of Redis command time per message, for workloads that have it.

    :param runs: each workload's runs (metrics, or None for a failed run),
        in the order the table lists them.
    :return: Markdown lines (none when no run measured commandstats).
    """
    rows: list[str] = []
    for workload, results in runs.items():
        measured = [run for run in results if run is not None and USEC in run]
        if not measured:
            continue
        names = sorted({name for run in measured for name in commands(run)})
        total = _median_range([run[USEC] for run in measured])
        parts = []
        for name in names:
            usec = _median([commands(run).get(name, 0.0) for run in measured])
            calls = _median([run.get(f"{CALLS}:{name}", 0.0) for run in measured])
            if usec < 0.005:
                continue
            mark = "*" if any(f"{NESTED}:{name}" in run for run in measured) else ""
            parts.append(f"{name.upper()}{mark} {usec:.2f} ({calls * 100:.3g})")
        rows.append(f"| {workload} | {total} | {', '.join(parts)} |")
    if not rows:
        return []
    return [
        "### Redis command time per message (`INFO commandstats`)",
        "",
        "Microseconds the Redis server spent running commands, per message "
        "drained (the benchmark's own polls left out); per command: µs per "
        "message (calls per 100 messages). `*`: run inside a script or "
        "`EXEC` and counted in its time, so left out of the total.",
        "",
        "| workload | total µs/msg | per command |",
        "|---|---|---|",
        *rows,
        "",
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _median_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_median(values):.2f} ({min(values):.2f}\u2013{max(values):.2f})"
