"""The shipped Prometheus and Alertmanager configs: valid for the real tools (promtool, amtool),
every alert unit-tested with promtool (below threshold, pending before `for`, firing with exact
labels and annotations), every recording rule checked, and the conventions of alert_rules.yml."""
from __future__ import annotations

import re
import subprocess
from collections import defaultdict

import pytest

from tests.conftest import require_binaries
from tests.stack_promql import (WORKSPACE, alert_rules, counters_outside_rate, dashboard_targets,
                                load_yaml, metric_names, parse_duration, range_windows,
                                recording_rules, rules)

RULE_TESTS = sorted((WORKSPACE / "tests" / "rules").glob("*.test.yml"))
def tool(binary: str) -> str:
    return require_binaries(binary)[0]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=WORKSPACE, capture_output=True, text=True, timeout=300)


# --- the real tools -------------------------------------------------------------------------------

def test_promtool_check_config_accepts_prometheus_yml_and_its_rule_files():
    result = run(tool("promtool"), "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks the rule files it loads: both must be named
    assert "recording_rules.yml" in result.stdout and "alert_rules.yml" in result.stdout


def test_promtool_check_rules_accepts_the_rule_files():
    result = run(tool("promtool"), "check", "rules", "recording_rules.yml", "alert_rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config_accepts_alertmanager_yml():
    result = run(tool("amtool"), "check-config", "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=RagHighErrorRate"], "page"),
    (["severity=warning", "alertname=RagHighQueryLatency"], "ticket"),
    (["alertname=Watchdog"], "default"),
    (["severity=warning", "alertname=RagWatchdog"], "deadmans-switch"),
])
def test_alertmanager_routes_by_severity(labels, receiver):
    result = run(tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml",
                 *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "tests/rules/*.test.yml are missing"
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_a_wrong_expectation_fails_the_promtool_tests(tmp_path):
    """The unit tests can fail: the same test file with one expected value changed does."""
    source = WORKSPACE / "tests" / "rules" / "service_alerts.test.yml"
    broken = source.read_text().replace("is 2.975s over the last 5 minutes",
                                        "is 3s over the last 5 minutes")
    assert broken != source.read_text()
    target = tmp_path / "rules" / "broken.test.yml"
    target.parent.mkdir()
    # rule_files are relative to the test file: keep the same depth below the workspace
    target.write_text(broken.replace("../../", str(WORKSPACE) + "/"))
    result = run(tool("promtool"), "test", "rules", str(target))
    assert result.returncode != 0 and "2.975s" in result.stdout + result.stderr


# --- every alert is tested in three ways ----------------------------------------------------------

def _rule_test_cases():
    """(file, group, kind, data) for every check in tests/rules/*.test.yml."""
    for path in RULE_TESTS:
        for group in load_yaml(path)["tests"]:
            for check in group.get("alert_rule_test", []):
                yield path.name, group, "alert", check
            for check in group.get("promql_expr_test", []):
                yield path.name, group, "expr", check


def _alerts_matchers(expr: str) -> dict[str, str] | None:
    match = re.fullmatch(r'\s*ALERTS\{(.*)\}\s*', expr)
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match else None


def _coverage():
    firing, pending, silent_below = defaultdict(list), defaultdict(list), defaultdict(list)
    for file, group, kind, check in _rule_test_cases():
        at = parse_duration(check["eval_time"])
        if kind == "alert":
            for alert in check.get("exp_alerts") or []:
                key = (check["alertname"], alert["exp_labels"].get("severity"))
                firing[key].append((file, group, alert))
            continue
        matchers = _alerts_matchers(check["expr"])
        if matchers is None or "alertname" not in matchers:
            continue
        samples = check.get("exp_samples") or []
        if not samples and "alertstate" not in matchers:
            silent_below[matchers["alertname"], matchers.get("severity")].append((file, group, at))
        for sample in samples:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
            if labels.get("alertstate") == "pending":
                pending[labels["alertname"], labels.get("severity")].append((file, group, at))
    return firing, pending, silent_below


ALERT_VARIANTS = sorted({(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()})


@pytest.mark.parametrize("alertname, severity", ALERT_VARIANTS)
def test_every_alert_has_a_firing_case_with_exact_labels_and_annotations(alertname, severity):
    firing, _, _ = _coverage()
    cases = firing[alertname, severity]
    assert cases, f"no promtool test expects {alertname} (severity {severity}) to fire"
    rule = next(r for r in alert_rules() if r["alert"] == alertname and r["labels"]["severity"] == severity)
    for file, group, alert in cases:
        assert set(alert.get("exp_annotations", {})) == set(rule["annotations"]), \
            f"{file} / {group['name']}: the firing case must state every annotation exactly"
        assert alert["exp_labels"]["alertname"] == alertname


@pytest.mark.parametrize("alertname, severity", ALERT_VARIANTS)
def test_every_alert_has_a_pending_case_that_is_silent_before_for(alertname, severity):
    _, pending, _ = _coverage()
    cases = pending[alertname, severity]
    assert cases, (f"no promtool test shows {alertname} (severity {severity}) pending: "
                   "above threshold but before `for` has elapsed")
    for file, group, at in cases:
        silent = [c for c in group.get("alert_rule_test", []) if c["alertname"] == alertname
                  and parse_duration(c["eval_time"]) == at
                  and not any(a["exp_labels"].get("severity") == severity for a in c.get("exp_alerts") or [])]
        assert silent, (f"{file} / {group['name']}: at {at:g} s {alertname} is pending; an "
                        "alert_rule_test at the same time must expect it not to fire")


# A dead man's switch (expr vector(1)) fires always: it has no threshold to stay below.
THRESHOLD_ALERT_VARIANTS = sorted({(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()
                                   if rule["expr"].strip() != "vector(1)"})


@pytest.mark.parametrize("alertname, severity", THRESHOLD_ALERT_VARIANTS)
def test_every_alert_has_a_below_threshold_case_that_stays_silent(alertname, severity):
    _, _, silent = _coverage()
    rule = next(r for r in alert_rules() if r["alert"] == alertname and r["labels"]["severity"] == severity)
    cases = silent[alertname, severity] + silent[alertname, None]
    # long enough after the start that `for` would have elapsed had the condition been true
    cases = [(file, group, at) for file, group, at in cases if at > parse_duration(rule["for"])]
    assert cases, (f"no promtool test shows {alertname} (severity {severity}) silent below its "
                   "threshold: ALERTS{alertname=...} with no samples, later than its `for`")
    for file, group, _at in cases:
        assert group["input_series"], f"{file} / {group['name']} has no input series"


def test_every_recording_rule_is_checked_by_a_promql_expr_test():
    tested = set()
    for _file, _group, kind, check in _rule_test_cases():
        if kind == "expr" and check.get("exp_samples"):
            tested |= metric_names(check["expr"])
    missing = sorted({rule["record"] for rule in recording_rules()} - tested)
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


# --- conventions of alert_rules.yml ---------------------------------------------------------------

@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_follows_the_conventions(rule):
    name = rule["alert"]
    assert re.fullmatch(r"Rag[A-Z][A-Za-z0-9]+", name), f"{name}: CamelCase with the prefix Rag"
    assert parse_duration(rule["for"]) > 0, f"{name}: needs a `for`"
    assert rule["labels"]["severity"] in ("critical", "warning")
    notes = rule["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url"}, name
    assert "$value" in notes["description"], f"{name}: the description must show $value"
    assert "$labels." in notes["description"], f"{name}: the description must show the labels"
    assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}"


def test_alerts_sharing_a_name_differ_only_in_severity():
    by_name = defaultdict(list)
    for rule in alert_rules():
        by_name[rule["alert"]].append(rule["labels"]["severity"])
    for name, severities in by_name.items():
        assert len(severities) == len(set(severities)), f"{name} has two rules of one severity"


def test_the_five_product_alerts_and_the_others_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert {"RagHighQueryLatency", "RagHighErrorRate", "RagLowCacheHitRate", "RagDailySpendOverBudget",
            "RagRateLimitLow", "RagTargetDown", "RagLabelOverflow", "RagInstrumentationErrors",
            "RagAvailabilityBudgetBurn", "RagLatencyBudgetBurn", "RagHostMemoryHigh",
            "RagHostCpuHigh", "RagHostDiskSpaceLow"} <= names


def test_burn_rate_alerts_use_the_four_window_pairs_and_factors():
    expected = {"critical": {("5m", "1h", "14.4"), ("30m", "6h", "6")},
                "warning": {("2h", "1d", "3"), ("6h", "3d", "1")}}
    for rule in alert_rules():
        if not rule["alert"].endswith("BudgetBurn"):
            continue
        found = set()
        for block in rule["expr"].split("\nor\n"):
            windows = re.findall(r"ratio_rate(\d+[mhd])", block)
            factors = set(re.findall(r"\(([\d.]+) \* rag:slo_error_budget:ratio\)", block))
            assert len(windows) == 2 and len(factors) == 1, block
            found.add((windows[0], windows[1], factors.pop()))
        assert found == expected[rule["labels"]["severity"]], rule["alert"]


def test_objectives_are_recorded_once_per_slo():
    objectives = [r for r in recording_rules() if r["record"] == "rag:slo_objective:ratio"]
    assert sorted(r["labels"]["slo"] for r in objectives) == ["availability", "latency"]
    for rule in alert_rules():
        if rule["_group"] == "rag-slo":
            # no burn-rate alert hard-codes an objective: they all read the recorded budget
            assert not re.search(r"0\.9\d", rule["expr"]), rule["alert"]
            assert "rag:slo_error_budget:ratio" in rule["expr"], rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("record") or r.get("alert"))
def test_rules_read_counters_only_through_rate_or_increase(rule):
    assert counters_outside_rate(rule["expr"]) == []


def test_recording_rules_are_named_level_metric_operations():
    for rule in recording_rules():
        assert re.fullmatch(r"[a-z_]+:[a-zA-Z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_alerts_and_dashboard_share_the_recorded_expressions():
    """Windowed alert conditions come from recording rules, and the dashboard shows the same
    recorded series, so a panel displays exactly what its alert judges."""
    recorded = {rule["record"] for rule in recording_rules()}
    panel_names = set().union(*(metric_names(t["expr"]) for _p, t in dashboard_targets()))
    for rule in alert_rules():
        if rule["_group"] in ("rag-monitoring", "rag-alerting-path"):
            continue  # the health of the library and of the alerting path, not on the dashboard
        used = metric_names(rule["expr"])
        assert not range_windows(rule["expr"]), f"{rule['alert']} computes a window itself"
        assert used <= recorded | {"up"}, f"{rule['alert']} reads raw series {used - recorded}"
        # configured constants (rag:..., recording_rules.yml) and the volume guards (the count
        # of bad events behind a ratio the dashboard shows) need no panel of their own
        shown = {n for n in used if not n.startswith(("job_slo:", "rag:"))
                 and not re.search(r":increase\d+[smhd]$", n)}
        assert shown <= panel_names, f"{rule['alert']}: {shown - panel_names} not on the dashboard"


def test_runbook_has_a_section_per_alert():
    runbook = (WORKSPACE / "docs" / "runbook.md").read_text(encoding="utf-8")
    missing = sorted({rule["alert"].lower() for rule in alert_rules()} - _anchors(runbook))
    assert not missing, f"docs/runbook.md has no section for {missing}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the markdown headings."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}
