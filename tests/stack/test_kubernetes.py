"""deploy/kubernetes/: the prometheus-operator manifests are what `m2_3_stack.py kubernetes`
generates from the shipped rule files (no drift), valid YAML of the right kinds, and the rules
they embed pass `promtool check rules` and equal the shipped ones."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from ragmon.stack.kubernetes import APP, render_manifests
from tests.conftest import require_binaries
from tests.stack_promql import RULE_FILES, WORKSPACE, load_yaml

DEPLOY = WORKSPACE / "deploy" / "kubernetes"
KINDS = {"prometheusrule.yaml": "PrometheusRule", "servicemonitor.yaml": "ServiceMonitor",
         "deployment.yaml": "Deployment", "service.yaml": "Service"}


def manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_committed_manifest_is_what_the_generator_writes(name):
    expected = render_manifests()[name]
    assert (DEPLOY / name).read_text(encoding="utf-8") == expected, (
        f"deploy/kubernetes/{name} drifted from the rule files; run `python m2_3_stack.py kubernetes`")


@pytest.mark.parametrize("name, kind", sorted(KINDS.items()))
def test_manifests_are_yaml_of_their_kind(name, kind):
    document = manifest(name)
    assert document["kind"] == kind and document["metadata"]["name"].startswith(APP)
    assert document["apiVersion"]


def test_the_prometheus_rule_holds_exactly_the_shipped_rules():
    groups = manifest("prometheusrule.yaml")["spec"]["groups"]
    shipped = [group for path in RULE_FILES for group in load_yaml(path)["groups"]]
    assert groups == shipped


def test_the_embedded_rules_pass_promtool(tmp_path):
    promtool, = require_binaries("promtool")
    rules = tmp_path / "embedded_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": manifest("prometheusrule.yaml")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_service_monitor_scrapes_the_services_metrics_port():
    monitor, service = manifest("servicemonitor.yaml"), manifest("service.yaml")
    deployment = manifest("deployment.yaml")
    # the ServiceMonitor selects the Service, which selects the Deployment's pods
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    endpoint, = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    container, = deployment["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    # the job label is the Service's name: the one the shipped rules and dashboard use
    assert service["metadata"]["name"] == "rag-service"
    assert deployment["spec"]["replicas"] >= 2 and service["spec"]["type"] == "ClusterIP"
    assert monitor["spec"]["endpoints"][0]["interval"] == \
        load_yaml(WORKSPACE / "prometheus.yml")["global"]["scrape_interval"]
