"""The contract between the library and the monitoring files: every metric a rule or a panel
reads exists in the catalog (ragmon/catalog.py) with the labels and label values used, and the
Stack API the notebook and the tests rely on has the agreed shape."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from ragmon.instrument.catalog import QUERY_LATENCY_BUCKETS, TOKEN_TYPES, GuardedMetric, RAGMetrics
from tests.stack_promql import (WORKSPACE, dashboard_targets, grouping_labels, metric_names,
                                recording_rules, rules, selectors)

# Series the stack itself or node-exporter provides, not the library.
FOREIGN_PREFIXES = ("node_", "prometheus_", "alertmanager_", "push_")
FOREIGN_NAMES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Label values the dashboard and rules rely on (docs/metrics.md).
LABEL_VALUES = {"status": {"success", "error", "cancelled"}, "result": {"hit", "miss"},
                "token_type": set(TOKEN_TYPES)}
SCRAPE_LABELS = {"job", "instance"}


def catalog() -> dict[str, set[str]]:
    """Exposed sample name -> its label names, for every metric of the catalog."""
    metrics = RAGMetrics(registry=CollectorRegistry())
    out = {}
    for value in vars(metrics).values():
        metric = value.metric if isinstance(value, GuardedMetric) else value
        if not (hasattr(metric, "_labelnames") and hasattr(metric, "_type")):
            continue
        labels, name = set(metric._labelnames), metric._name
        if metric._type == "histogram":
            out.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels,
                        f"{name}_count": labels})
        elif metric._type == "counter":
            out[f"{name}_total"] = labels
        else:
            out[name] = labels
    assert set(out) <= metrics.exposed_series_names()
    return out


def all_expressions() -> list[tuple[str, str]]:
    exprs = [(rule.get("record") or rule.get("alert"), rule["expr"]) for rule in rules()]
    exprs += [(f"panel {panel['title']!r}", target["expr"]) for panel, target in dashboard_targets()]
    return exprs


def unknown_metrics(expr: str, known: set[str], recorded: set[str]) -> set[str]:
    return {name for name in metric_names(expr)
            if name not in known and name not in recorded and name not in FOREIGN_NAMES
            and not name.startswith(FOREIGN_PREFIXES)}


RECORDED = {rule["record"] for rule in recording_rules()}


@pytest.mark.parametrize("where, expr", all_expressions(), ids=lambda v: str(v)[:60])
def test_every_metric_used_exists_in_the_catalog(where, expr):
    known = RAGMetrics(registry=CollectorRegistry()).exposed_series_names()
    missing = unknown_metrics(expr, known, RECORDED)
    assert not missing, f"{where} reads {sorted(missing)}, which the library does not expose"


def test_the_check_catches_a_misspelled_metric():
    known = RAGMetrics(registry=CollectorRegistry()).exposed_series_names()
    assert unknown_metrics('sum(rate(rag_query_total{job="x"}[5m]))', known, RECORDED) == {"rag_query_total"}
    assert unknown_metrics("job:rag_spend_dollar:rate1h", known, RECORDED) == {"job:rag_spend_dollar:rate1h"}
    assert unknown_metrics("node_load1 + up", known, RECORDED) == set()


def test_every_recording_rule_reads_only_defined_series():
    """A recording rule that reads another reads one defined above it, in the same file."""
    seen = set()
    for rule in recording_rules():
        used = {n for n in metric_names(rule["expr"]) if ":" in n}
        assert used <= seen, f"{rule['record']} reads {used - seen} before it is recorded"
        seen.add(rule["record"])


def label_problems(where: str, expr: str) -> list[str]:
    labels_of, problems = catalog(), []
    for name, matchers in selectors(expr):
        if name not in labels_of:
            continue
        allowed = labels_of[name] | SCRAPE_LABELS
        if not set(matchers) <= allowed:
            problems.append(f"{where}: {name} has no label {sorted(set(matchers) - allowed)}")
        for label, value in matchers.items():
            if label in LABEL_VALUES and not set(value.split("|")) <= LABEL_VALUES[label]:
                problems.append(f"{where}: {label}={value!r} on {name}; the library writes "
                                f"{sorted(LABEL_VALUES[label])}")
    used = metric_names(expr)
    if used and used <= set(labels_of):  # grouping over raw catalog metrics only
        allowed = set().union(*(labels_of[n] for n in used)) | SCRAPE_LABELS
        extra = grouping_labels(expr) - allowed
        if extra:
            problems.append(f"{where}: groups by {sorted(extra)}, which {sorted(used)} do not have")
    return problems


@pytest.mark.parametrize("where, expr", all_expressions(), ids=lambda v: str(v)[:60])
def test_labels_and_values_used_exist_on_the_metric(where, expr):
    assert label_problems(where, expr) == []


@pytest.mark.parametrize("expr, expected", [
    ('rate(rag_queries_total{status="failed"}[5m])', "status='failed'"),
    ('rate(rag_cache_operations_total{result=~"hit|hits"}[5m])', "result='hit|hits'"),
    ('rate(rag_queries_total{model="gpt-4"}[5m])', "has no label ['model']"),
    ('sum by (error_type) (rate(rag_queries_total[5m]))', "groups by ['error_type']"),
])
def test_the_label_check_catches_wrong_labels_and_values(expr, expected):
    assert any(expected in problem for problem in label_problems("x", expr))


def test_le_matchers_name_a_real_bucket_as_the_library_writes_it():
    """le="2" would never match: prometheus_client writes the 2 s bucket as le="2.0"."""
    buckets = {floatToGoString(b) for b in QUERY_LATENCY_BUCKETS}
    for where, expr in all_expressions():
        for name, matchers in selectors(expr):
            if name == "rag_query_duration_seconds_bucket" and "le" in matchers:
                assert matchers["le"] in buckets, f"{where}: le={matchers['le']!r} is not a bucket"


# --- the Stack API ------------------------------------------------------------------

def test_stack_api_has_the_agreed_shape(tmp_path, settings):
    from m2_3_stack import Stack
    params = inspect.signature(Stack).parameters
    assert list(params)[:4] == ["workdir", "app_targets", "fast", "ports"]
    assert params["fast"].default is False and params["ports"].default is None
    stack = Stack(workdir=tmp_path, app_targets=["127.0.0.1:8000"], fast=True, ports=None,
                  settings=settings)
    assert stack.status() == {"prometheus": False, "alertmanager": False, "pushgateway": False,
                              "node_exporter": False}
    assert stack.urls == {}
    assert stack.down() == {"prometheus": False, "alertmanager": False, "pushgateway": False,
                            "node_exporter": False}  # idempotent: nothing was running
    stack.extra_receiver_url = "http://127.0.0.1:5001/alerts"
    for method in ("up", "down", "status", "__enter__", "__exit__", "query"):
        assert callable(getattr(stack, method))


def test_stack_cli_offers_the_agreed_verbs_and_flags():
    result = subprocess.run([sys.executable, "m2_3_stack.py", "up", "--help"], cwd=WORKSPACE,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--fast", "--app-target", "--prometheus-port", "--alertmanager-port",
                 "--pushgateway-port", "--node-exporter-port", "--workdir"):
        assert flag in result.stdout
    result = subprocess.run([sys.executable, "m2_3_stack.py", "--help"], cwd=WORKSPACE,
                            capture_output=True, text=True, timeout=60)
    for verb in ("up", "down", "status"):
        assert verb in result.stdout
