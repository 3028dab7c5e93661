"""Rendering the HA stack's configs (ragmon/stack/render.py): two Prometheus replicas that differ
only in their `replica` external label and drop it from alerts, every Alertmanager peer as a
target, remote write to VictoriaMetrics; app targets in file_sd files. Checked with the real
promtool and amtool; no daemon is started here."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from ragmon.stack.render import (ALERTMANAGER_FILE, FAST_HA_GROUP_INTERVAL, PROMETHEUS_FILE,
                                 REPLICA_LABEL, RULE_FILES, StackConfigError,
                                 VICTORIA_METRICS_RELABEL, dump_yaml, load_yaml,
                                 normalise_app_jobs, render_alertmanager, render_ha_prometheus,
                                 render_prometheus, render_rules, render_targets, targets_file)
from tests.conftest import make_settings, require_binaries

PORTS = {"prometheus": 19090, "alertmanager": 19093, "pushgateway": 19091, "node_exporter": 19100}
PROMETHEUS_PAIR = ["127.0.0.1:19090", "127.0.0.1:19190"]
PEERS = ["127.0.0.1:19093", "127.0.0.1:19193"]


def replica_config(tmp_path, replica: str, fast: bool = True) -> dict:
    rules = []
    for source in RULE_FILES:
        path = tmp_path / source.name
        path.write_text(dump_yaml(render_rules(load_yaml(source), fast), source))
        rules.append(path)
    base = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=rules,
                             app_jobs=normalise_app_jobs(["127.0.0.1:18000"]), fast=fast,
                             targets_dir=tmp_path / "targets")
    return render_ha_prometheus(base, replica=replica, prometheus_targets=PROMETHEUS_PAIR,
                                alertmanager_targets=PEERS,
                                remote_write_url="http://127.0.0.1:18428/api/v1/write", fast=fast)


def test_the_two_replicas_differ_only_in_their_replica_label(tmp_path):
    a, b = replica_config(tmp_path, "a"), replica_config(tmp_path, "b")
    assert a["global"]["external_labels"] == {REPLICA_LABEL: "a"}
    assert b["global"]["external_labels"] == {REPLICA_LABEL: "b"}
    b["global"]["external_labels"][REPLICA_LABEL] = "a"
    assert a == b


def test_alerts_lose_the_replica_label_so_the_peers_see_one_alert(tmp_path):
    alerting = replica_config(tmp_path, "a")["alerting"]
    assert alerting["alert_relabel_configs"] == [{"action": "labeldrop", "regex": REPLICA_LABEL}]
    assert alerting["alertmanagers"][0]["static_configs"][0]["targets"] == PEERS


def test_both_replicas_remote_write_and_the_store_drops_the_replica_label(tmp_path):
    config = replica_config(tmp_path, "b")
    write, = config["remote_write"]
    assert write["url"] == "http://127.0.0.1:18428/api/v1/write"
    assert VICTORIA_METRICS_RELABEL == [{"action": "labeldrop", "regex": REPLICA_LABEL}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["prometheus"]["static_configs"][0]["targets"] == PROMETHEUS_PAIR
    assert jobs["alertmanager"]["static_configs"][0]["targets"] == PEERS


def test_app_targets_come_from_a_file_sd_file(tmp_path):
    config = replica_config(tmp_path, "a")
    app = next(job for job in config["scrape_configs"] if job["job_name"] == "rag-service")
    assert "static_configs" not in app
    assert app["file_sd_configs"] == [{"files": [str(targets_file(tmp_path / "targets", "rag-service"))],
                                       "refresh_interval": "5s"}]
    assert render_targets(["127.0.0.1:8002", "127.0.0.1:8001", "127.0.0.1:8001"]) == \
        [{"targets": ["127.0.0.1:8001", "127.0.0.1:8002"], "labels": {}}]
    with pytest.raises(StackConfigError, match="is not HOST:PORT"):
        render_targets(["replica-3"])


@pytest.mark.parametrize("fast", [True, False])
def test_promtool_accepts_a_replica_config(tmp_path, fast):
    promtool, = require_binaries("promtool")
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "rag-service.json").write_text(json.dumps(render_targets(["127.0.0.1:18000"])))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(replica_config(tmp_path, "a", fast)))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fast_ha_alertmanager_outwaits_the_gap_between_the_replicas(tmp_path):
    amtool, = require_binaries("amtool")
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(), fast=True, ha=True)
    assert config["route"]["group_interval"] == FAST_HA_GROUP_INTERVAL
    assert all(route["group_interval"] == FAST_HA_GROUP_INTERVAL
               for route in config["route"]["routes"] if "group_interval" in route)
    single = render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(), fast=True)
    assert single["route"]["group_interval"] == "2s"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
