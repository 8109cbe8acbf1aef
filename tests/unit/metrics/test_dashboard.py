"""examples/grafana-dashboard.json reads only what ``PrometheusBatchMetrics`` serves."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from taskiq_batching import BatchReport, FlushReason
from taskiq_batching.metrics import INSTRUMENTS, PrometheusBatchMetrics

pytestmark = pytest.mark.timeout(10)

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana-dashboard.json"

#: PromQL words that are not metric names (functions are told by their "(").
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan",
}  # fmt: skip
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    found = [
        target["expr"]
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads."""
    names = set(re.findall(rf"label_values\(\s*({NAME})\s*,", expr))
    expr = re.sub(rf"label_values\(\s*{NAME}\s*,\s*{NAME}\s*\)", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges ($__rate_interval)
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )
    for match in re.finditer(rf"(?<![\w.$]){NAME}", expr):
        word = match.group()
        calls = expr[match.end() :].lstrip().startswith("(")
        if not calls and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def served() -> set[str]:
    """Every sample name PrometheusBatchMetrics serves, once each has a value."""
    metrics = PrometheusBatchMetrics(registry=CollectorRegistry())
    metrics.flushed("t", FlushReason.SIZE, 2)
    report = BatchReport("t", 2, 4, FlushReason.SIZE, 0.1, 0.1, failed=1, calls=2)
    metrics.finished(report)
    metrics.reclaimed(1)
    metric = metrics.metrics()
    for gauge in (metric.buffered, metric.in_flight, metric.running):
        gauge.labels("t").set(0)
    assert metrics.registry is not None
    return {
        sample.name
        for family in metrics.registry.collect()
        for sample in family.samples
        # Not served in multiprocess mode (taskiq worker --workers N).
        if not sample.name.endswith("_created")
    }


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (task_name, le) (rate(a_bucket{le="1",'
        'task_name=~"$t"}[$__rate_interval]))) / on (x) group_left (y) b_total '
        "and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("label_values(d_total, task_name)") == {"d_total"}


def test_every_query_reads_served_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    available = served()
    for expr in queries(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names <= available, f"{sorted(names - available)} in {expr}"


def test_the_dashboard_shows_every_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(expr) for expr in queries(dashboard)))
    for spec in INSTRUMENTS:
        forms = {spec.name, f"{spec.name}_total", f"{spec.name}_sum"}
        forms |= {f"{spec.name}_count", f"{spec.name}_bucket"}
        assert used & forms, spec.name


def test_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "task_name"}
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for pair in ("()", "{}", "[]"):
                assert expr.count(pair[0]) == expr.count(pair[1]), expr
