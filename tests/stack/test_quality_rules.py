"""The answer-quality alerts (alert_rules.yml, group rag-quality): each is judged only once its
window holds enough evidence. tests/rules/quality_alerts.test.yml shows a quiet operation whose
three queries are all bad staying silent; here the same tests fail once an alert's volume guard
is removed, so the guard, not the data, is what keeps it silent. The score drop is relative:
its threshold is one number for every score, judged against the score's own baseline."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from ragmon.stack.render import fast_expr
from tests.conftest import require_binaries
from tests.stack_promql import WORKSPACE, alert_rules, parse_duration, recording_rules

QUALITY_ALERTS = ("RagQualityScoreDrop", "RagEmptyRetrievalRateHigh",
                  "RagNegativeFeedbackRateHigh", "RagIndexStale")
TESTS = WORKSPACE / "tests" / "rules" / "quality_alerts.test.yml"


def promtool_test(root) -> subprocess.CompletedProcess:
    promtool = require_binaries("promtool")[0]
    return subprocess.run([promtool, "test", "rules", "tests/rules/quality_alerts.test.yml"],
                          cwd=root, capture_output=True, text=True, timeout=300)


def test_the_quality_alerts_exist_with_a_guard_each():
    rules = {rule["alert"]: rule for rule in alert_rules() if rule["_group"] == "rag-quality"}
    assert sorted(rules) == sorted(QUALITY_ALERTS)
    for name, rule in rules.items():
        condition, _and, guard = rule["expr"].partition("\nand\n")
        assert f'rag:alert_min_' in guard and f'alert="{name}"' in guard, rule["expr"]
        assert f'alert="{name}"' in condition, f"{name}: its threshold lives in rag-alert-thresholds"


def test_the_score_drop_is_relative_to_the_scores_own_baseline():
    recorded = {rule["record"]: rule["expr"] for rule in recording_rules()}
    drop = recorded["job_operation_score:rag_evaluation_score:relative_drop_mean5m"]
    assert "job_operation_score:rag_evaluation_score:mean5m_avg3d" in drop
    baseline = recorded["job_operation_score:rag_evaluation_score:mean5m_avg3d"]
    # the baseline ends where the judged window begins, on the fast stack too
    assert "offset 5m" in baseline
    fast = fast_expr(baseline)
    window = parse_duration(fast.split("[")[1].split("]")[0])
    offset = parse_duration(fast.split("offset ")[1].split(")")[0].strip())
    assert offset == parse_duration(fast_expr("x[5m]")[2:-1]) and window > 3 * offset, fast


@pytest.mark.parametrize("alertname", QUALITY_ALERTS)
def test_without_its_volume_guard_a_quiet_operation_pages_on_three_queries(tmp_path, alertname):
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    shutil.copy(TESTS, tmp_path / "tests" / "rules")
    shutil.copy(WORKSPACE / "recording_rules.yml", tmp_path)
    rules = yaml.safe_load((WORKSPACE / "alert_rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                rule["expr"] = rule["expr"].partition("\nand\n")[0]
    (tmp_path / "alert_rules.yml").write_text(yaml.safe_dump(rules))
    assert promtool_test(WORKSPACE).returncode == 0
    result = promtool_test(tmp_path)
    failures = result.stdout + result.stderr
    assert result.returncode != 0, "the guard cases pass without the guard: they prove nothing"
    assert f"alertname: {alertname}" in failures and 'operation="admin_reindex"' in failures, failures
