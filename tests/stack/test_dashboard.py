"""Lint of grafana_dash.json: the rules every panel and target must follow, the panels the product
design asks for, and the Grafana provisioning that loads it. Each rule is shown to catch a broken
copy of the dashboard."""
from __future__ import annotations

import copy
import json
import re

import pytest

from tests.stack_promql import (WORKSPACE, counters_outside_rate, dashboard, dashboard_panels,
                                load_yaml, range_windows, selectors)

DS = {"type": "prometheus", "uid": "$datasource"}
ALLOWED_WINDOWS = {"$__rate_interval"}
PRODUCT_PANELS = [  # the ten panels of the product design, then the bottleneck view
    "Query latency p50 / p95 / p99", "Request rate and error rate", "Token usage",
    "Cost per query and total spend", "Cache hit rate %", "Error rate %", "Active requests",
    "Rate limit remaining", "Relevance score", "Error breakdown by type",
    "Stage latency p95", "Share of query time by stage"]
HOST_ROW, HOST_PANELS = "Host (node-exporter)", ["CPU busy", "Memory used", "Disk used"]


def lint(board: dict) -> list[str]:
    """Every rule broken by `board`, as readable problems (empty list: clean)."""
    problems = []
    if board.get("editable") is not False:
        problems.append("dashboard: editable must be false (provisioned, changed in git)")
    for key in ("uid", "title", "description"):
        if not board.get(key):
            problems.append(f"dashboard: {key} is missing")
    inputs = [i for i in board.get("__inputs", []) if i.get("type") == "datasource"
              and i.get("pluginId") == "prometheus"]
    if not inputs:
        problems.append("dashboard: __inputs needs a Prometheus datasource input (Grafana UI import)")

    variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource", {})
    if ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.append("templating: a `datasource` variable of type datasource (prometheus) is "
                        "needed so provisioning can load the dashboard")
    for name in ("service", "job", "node"):
        var = variables.get(name)
        if var is None or var.get("type") != "query":
            problems.append(f"templating: query variable ${name} is missing")
        elif var.get("datasource") != DS:
            problems.append(f"templating: ${name} must query $datasource")
    text = json.dumps({k: v for k, v in board.items() if k not in ("__inputs", "templating")})
    if "${DS_" in text:
        problems.append("panels: ${DS_...} only belongs in the datasource variable; panels use $datasource")

    ids = [p.get("id") for p in dashboard_panels(board)]
    if len(ids) != len(set(ids)):
        problems.append("panels: ids are not unique")
    problems += _layout_problems(board)

    for panel in dashboard_panels(board):
        if panel.get("type") == "row":
            continue
        where = f"panel {panel.get('title')!r}"
        if not panel.get("title"):
            problems.append(f"{where}: title is missing")
        if not panel.get("description"):
            problems.append(f"{where}: description is missing")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: fieldConfig.defaults.unit is missing")
        if panel.get("datasource") != DS:
            problems.append(f"{where}: datasource must be {DS}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(ref_ids) != len(set(ref_ids)) or None in ref_ids:
            problems.append(f"{where}: refIds must be set and unique")
        host = "node_" in json.dumps(targets)
        for target in targets:
            expr = target.get("expr", "")
            if target.get("datasource") != DS:
                problems.append(f"{where}: target {target.get('refId')} datasource must be $datasource")
            if not expr.strip():
                problems.append(f"{where}: target {target.get('refId')} has no expr")
                continue
            windows = set(range_windows(expr)) - ALLOWED_WINDOWS
            if windows:
                problems.append(f"{where}: range {sorted(windows)} must be [$__rate_interval] "
                                f"(or a recording rule)")
            raw = counters_outside_rate(expr)
            if raw:
                problems.append(f"{where}: counters {raw} used outside rate()/increase()")
            variable, label = ("$node", "instance") if host else ("$job", "job")
            for name, labels in selectors(expr.replace(variable, "__VAR__")):
                if labels.get(label) != "__VAR__":
                    problems.append(f"{where}: {name} must filter {label}=~\"{variable}\"")
            if not re.search(r"\{[^}]*\}", expr):
                problems.append(f"{where}: target {target.get('refId')} selects without a "
                                f"{variable} filter")
    return problems


def _layout_problems(board: dict) -> list[str]:
    cells, problems = {}, []
    for panel in dashboard_panels(board):
        grid = panel.get("gridPos") or {}
        x, y, w, h = (grid.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x + w > 24:
            problems.append(f"panel {panel.get('title')!r}: gridPos {grid} is outside the 24 columns")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problems.append(f"panel {panel.get('title')!r} overlaps {cells[cx, cy]!r}")
                    return problems
                cells[cx, cy] = panel.get("title")
    return problems


# --- the shipped dashboard ------------------------------------------------------------------------

def test_shipped_dashboard_passes_the_lint():
    assert lint(dashboard()) == []


def test_dashboard_has_the_product_panels_and_the_host_row():
    panels = dashboard_panels()
    titles = [p["title"] for p in panels]
    for title in PRODUCT_PANELS + HOST_PANELS + [HOST_ROW]:
        assert title in titles, f"panel {title!r} is missing"
    rows = [p for p in panels if p["type"] == "row"]
    host_y = next(r["gridPos"]["y"] for r in rows if r["title"] == HOST_ROW)
    for panel in panels:
        if panel["title"] in HOST_PANELS:
            assert panel["gridPos"]["y"] > host_y, f"{panel['title']} must sit in the host row"


def test_latency_panel_shows_p50_p95_p99_and_the_alerts_p95():
    panel = next(p for p in dashboard_panels() if p["title"] == PRODUCT_PANELS[0])
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "0.50" in exprs and "0.99" in exprs
    assert "job_operation:rag_query_duration_seconds:p95_rate5m" in exprs


def test_bottleneck_panel_divides_stage_time_by_query_time():
    panel = next(p for p in dashboard_panels() if p["title"] == "Share of query time by stage")
    expr = panel["targets"][0]["expr"]
    assert "rag_stage_duration_seconds_sum" in expr and "rag_query_duration_seconds_sum" in expr
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_import_input_is_the_datasource_variables_default():
    board = dashboard()
    name = board["__inputs"][0]["name"]
    ds_var = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    # Grafana's import replaces ${DS_...} with the data source picked; provisioning leaves it and
    # the variable falls back to the default Prometheus data source.
    assert ds_var["current"]["value"] == "${" + name + "}"


# --- the lint catches each broken rule ------------------------------------------------------------

def _first(board, title="Request rate and error rate"):
    return next(p for p in dashboard_panels(board) if p.get("title") == title)


def _set(path_value):
    def mutate(board):
        panel = _first(board)
        *keys, last = path_value[0]
        for key in keys:
            panel = panel[key]
        panel[last] = path_value[1]
    return mutate


MUTATIONS = {
    "editable": (lambda b: b.update(editable=True), "editable must be false"),
    "no inputs": (lambda b: b.pop("__inputs"), "__inputs"),
    "no datasource variable": (lambda b: b["templating"]["list"].pop(0), "`datasource` variable"),
    "no job variable": (lambda b: b["templating"]["list"].pop(2), "$job is missing"),
    "no description": (_set((["description"], "")), "description is missing"),
    "no unit": (_set((["fieldConfig", "defaults", "unit"], "")), "unit is missing"),
    "fixed datasource": (_set((["datasource"], {"type": "prometheus", "uid": "prom1"})), "datasource must be"),
    "DS input in a panel": (_set((["datasource"], {"type": "prometheus", "uid": "${DS_PROMETHEUS}"})), "${DS_"),
    "hard-coded window": (lambda b: _first(b)["targets"][0].update(
        expr='sum by (job) (rate(rag_queries_total{job=~"$job"}[5m]))'), "[$__rate_interval]"),
    "raw counter": (lambda b: _first(b)["targets"][0].update(
        expr='sum by (job) (rag_queries_total{job=~"$job"})'), "outside rate()"),
    "counter in a non-rate function": (lambda b: _first(b)["targets"][0].update(
        expr='sum by (job) (avg_over_time(rag_queries_total{job=~"$job"}[$__rate_interval]))'), "outside rate()"),
    "no job filter": (lambda b: _first(b)["targets"][0].update(
        expr='sum by (job) (rate(rag_queries_total[$__rate_interval]))'), "$job filter"),
    "host panel filtered by job": (lambda b: _first(b, "CPU busy")["targets"][0].update(
        expr='instance:node_cpu_utilisation:rate5m{job=~"$job"}'), 'instance=~"$node"'),
    "overlapping panels": (lambda b: _first(b).update(gridPos=dict(_first(b, "Query latency p50 / p95 / p99")["gridPos"])),
                           "overlaps"),
    "duplicate refId": (lambda b: _first(b)["targets"][1].update(refId="A"), "refIds"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_lint_catches(name):
    mutate, expected = MUTATIONS[name]
    board = copy.deepcopy(dashboard())
    mutate(board)
    problems = lint(board)
    assert any(expected in problem for problem in problems), problems


# --- provisioning ---------------------------------------------------------------------------------

PROVISIONING = WORKSPACE / "grafana" / "provisioning"


def test_datasource_provisioning_matches_prometheus_yml():
    sources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["isDefault"] is True and prometheus["url"] == "http://prometheus:9090"
    # $__rate_interval is 4x this: it must be Prometheus's real scrape interval
    scrape = load_yaml(WORKSPACE / "prometheus.yml")["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape
    assert all(s.get("editable") is False for s in sources)


def test_dashboard_provider_reads_the_directory_compose_mounts_the_dashboard_into():
    provider = load_yaml(PROVISIONING / "dashboards" / "rag.yml")["providers"][0]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    compose = load_yaml(WORKSPACE / "docker-compose.monitoring.yml")
    mounts = [v for v in compose["services"]["grafana"]["volumes"] if isinstance(v, str)]
    target = next(m.split(":")[1] for m in mounts if m.startswith("./grafana_dash.json:"))
    assert target.rsplit("/", 1)[0] == provider["options"]["path"]
    assert any(m.startswith("./grafana/provisioning:/etc/grafana/provisioning") for m in mounts)


def test_victoria_metrics_is_provisioned_as_a_second_prometheus_datasource():
    """The dashboard's datasource variable (type prometheus) offers it, so every panel runs on
    the long-term store unchanged (tests/integration/test_stack_ha.py runs them there)."""
    sources = {s["uid"]: s for s in load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]}
    victoria = sources["victoriametrics"]
    assert victoria["type"] == "prometheus" and victoria["isDefault"] is False
    assert victoria["jsonData"]["timeInterval"] == sources["prometheus"]["jsonData"]["timeInterval"]
    variable = next(v for v in dashboard()["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
