"""The budget alerts (alert_rules.yml, group rag-budgets) in promtool: the hand-written cases
(tests/rules/budget_alerts.test.yml), the seeded healthy noise beside a heavy tenant's fault
(tests/rules/budget_noise.py), the 5-minute guard that keeps a short burst from paging, and the
Alertmanager rule that lets a tenant's page silence that tenant's forecast only."""
from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.conftest import require_binaries
from tests.rules import budget_noise
from tests.stack_promql import WORKSPACE

RULES = WORKSPACE / "tests" / "rules"


def promtool_test(root, name: str) -> subprocess.CompletedProcess:
    promtool = require_binaries("promtool")[0]
    return subprocess.run([promtool, "test", "rules", f"tests/rules/{name}"], cwd=root,
                          capture_output=True, text=True, timeout=300)


def test_the_committed_noise_tests_are_the_generators_output():
    assert budget_noise.OUT.read_text() == budget_noise.render(), (
        "tests/rules/budget_noise_alerts.test.yml is stale; run `python -m tests.rules.budget_noise`")


def test_healthy_tenant_spend_is_silent_and_a_heavy_tenant_fires():
    result = promtool_test(WORKSPACE, budget_noise.OUT.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_five_minute_guard_a_short_burst_pages(tmp_path):
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    shutil.copy(RULES / "budget_alerts.test.yml", tmp_path / "tests" / "rules")
    shutil.copy(WORKSPACE / "recording_rules.yml", tmp_path)
    rules = yaml.safe_load((WORKSPACE / "alert_rules.yml").read_text())
    # the `and` and the three lines of the 5-minute pace after it
    guard = re.compile(r"\n\s*and\n\s*job_key_value:rag_budget_spend_dollars:rate5m[^\n]*\n[^\n]*\n[^\n]*\n")
    changed = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "RagTenantSpendPaceOverBudget":
                rule["expr"], found = guard.subn("\n", rule["expr"])
                assert found == 1, rule["expr"]
                changed += 1
    assert changed == 1
    (tmp_path / "alert_rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool_test(tmp_path, "budget_alerts.test.yml")
    assert result.returncode != 0, "the burst case passes without the guard: it proves nothing"
    failures = result.stdout + result.stderr
    # the burst case fails: its batch ("ingest") pages
    assert 'alertstate="firing"' in failures and 'value="ingest"' in failures, failures


def test_a_tenants_page_silences_only_that_tenants_forecast():
    config = yaml.safe_load((WORKSPACE / "alertmanager.yml").read_text())
    rule, = [r for r in config["inhibit_rules"]
             if r["source_matchers"] == ['alertname="RagTenantSpendOverBudget"']]
    assert rule["target_matchers"] == ['alertname="RagTenantSpendPaceOverBudget"', 'period="daily"']
    assert set(rule["equal"]) == {"job", "key", "value"}
    # the generic rule (one name, two severities) never pairs the two budget alerts
    for other in config["inhibit_rules"]:
        if other is not rule:
            assert "alertname" in other["equal"]
