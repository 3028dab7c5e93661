"""The ratio alerts on realistic healthy noise at production windows (tests/rules/noise.py,
seeded): silent on the noise, firing on the same noise with a fault, and silent only thanks to
their volume guard: without it the quiet operation and the small cache page on healthy traffic."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import require_binaries
from tests.rules import noise
from tests.stack_promql import WORKSPACE

# alert -> the quiet operation or small cache its guard keeps from paging on healthy noise
GUARDED = {"RagHighErrorRate": "admin_reindex", "RagLowCacheHitRate": "rerank",
           "RagQualityScoreDrop": "admin_reindex", "RagEmptyRetrievalRateHigh": "admin_reindex",
           "RagNegativeFeedbackRateHigh": "admin_reindex"}


def promtool_test(root) -> subprocess.CompletedProcess:
    promtool = require_binaries("promtool")[0]
    return subprocess.run([promtool, "test", "rules", "tests/rules/noise_alerts.test.yml"],
                          cwd=root, capture_output=True, text=True, timeout=300)


def test_the_committed_noise_tests_are_the_generators_output():
    assert noise.OUT.read_text() == noise.render(), (
        "tests/rules/noise_alerts.test.yml is stale; run `python -m tests.rules.noise`")


def test_healthy_noise_is_silent_and_the_faults_fire():
    result = promtool_test(WORKSPACE)
    assert result.returncode == 0, result.stdout + result.stderr


def without_guard(rules: dict, alertname: str) -> dict:
    """The alert rules with `alertname` judged on its ratio alone."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                ratio, _and, guard = rule["expr"].partition("\nand\n")
                assert "rag:alert_min_" in guard, rule["expr"]
                rule["expr"] = ratio
    return rules


@pytest.mark.parametrize("alertname", sorted(GUARDED))
def test_without_its_volume_guard_the_alert_pages_on_healthy_noise(tmp_path, alertname):
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    shutil.copy(noise.OUT, tmp_path / "tests" / "rules")
    shutil.copy(WORKSPACE / "recording_rules.yml", tmp_path)
    rules = yaml.safe_load((WORKSPACE / "alert_rules.yml").read_text())
    (tmp_path / "alert_rules.yml").write_text(yaml.safe_dump(without_guard(rules, alertname)))
    result = promtool_test(tmp_path)
    assert result.returncode != 0, "the noise tests pass without the guard: they prove nothing"
    failures = result.stdout + result.stderr
    # the healthy case fails, on the quiet operation or small cache the guard protects
    assert f'count_over_time(ALERTS{{alertname=\\"{alertname}\\"}}' in failures, failures
    assert GUARDED[alertname] in failures, failures
