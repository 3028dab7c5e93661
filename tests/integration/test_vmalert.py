"""The shipped rules evaluated by vmalert against VictoriaMetrics instead of Prometheus: a team
that moves rule evaluation to the long-term store keeps its recording rules, its alerts and its
notifications.

VictoriaMetrics scrapes the demo (with --fault errors) itself; vmalert evaluates the fast-mode
copies of recording_rules.yml and alert_rules.yml against it, writes the recorded series back,
and sends alerts to an Alertmanager rendered from the shipped alertmanager.yml, which delivers
them to the test's webhook.
"""
from __future__ import annotations

import pytest
import yaml

from ragmon.stack.api import APIError, AlertmanagerAPI, PrometheusAPI, http_ok
from ragmon.stack.process import Processes, free_port, wait_until
from ragmon.stack.render import (ALERTMANAGER_FILE, FAST_INTERVAL, RULE_FILES, dump_yaml, load_yaml,
                                 render_alertmanager, render_rules)
from ragmon.stack.webhook import WebhookReceiver
from tests.conftest import make_settings, require_binaries
from tests.stack_demo import Demo

FIRE_TIMEOUT = 150


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    victoria, vmalert, alertmanager = require_binaries("victoria-metrics", "vmalert",
                                                       "prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("vmalert")
    rules = []
    for source in RULE_FILES:
        path = workdir / source.name
        path.write_text(dump_yaml(render_rules(load_yaml(source), fast=True), source))
        rules.append(path)
    hook = WebhookReceiver().start()
    demo = Demo(free_port(), workdir, fault="errors", qps=8)
    ports = {name: free_port() for name in ("victoria", "vmalert", "alertmanager")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    scrape = workdir / "scrape.yml"
    scrape.write_text(yaml.safe_dump({
        "global": {"scrape_interval": FAST_INTERVAL},
        "scrape_configs": [{"job_name": "rag-service",
                            "static_configs": [{"targets": [demo.target]}]}]}))
    am_config = workdir / "alertmanager.yml"
    am_config.write_text(dump_yaml(render_alertmanager(
        load_yaml(ALERTMANAGER_FILE), make_settings(), extra_webhook_urls=[hook.url], fast=True),
        ALERTMANAGER_FILE))
    with Processes(handle_signals=False) as processes:
        try:
            demo.start()
            processes.start("victoria-metrics", [
                victoria, f"-httpListenAddr=127.0.0.1:{ports['victoria']}",
                f"-storageDataPath={workdir / 'vm-data'}", f"-promscrape.config={scrape}",
                "-search.latencyOffset=1s", "-search.disableCache", "-loggerLevel=WARN"],
                log_path=workdir / "victoria-metrics.log")
            processes.start("alertmanager", [
                alertmanager, f"--config.file={am_config}", f"--storage.path={workdir / 'am'}",
                f"--web.listen-address=127.0.0.1:{ports['alertmanager']}", "--cluster.listen-address="],
                log_path=workdir / "alertmanager.log")
            processes.start("vmalert", [
                vmalert, *[f"-rule={path}" for path in rules],
                f"-datasource.url={urls['victoria']}", f"-remoteWrite.url={urls['victoria']}",
                f"-notifier.url={urls['alertmanager']}", f"-evaluationInterval={FAST_INTERVAL}",
                "-remoteWrite.flushInterval=1s", "-disableAlertgroupLabel",
                f"-httpListenAddr=127.0.0.1:{ports['vmalert']}", "-loggerLevel=WARN"],
                log_path=workdir / "vmalert.log")
            for name, path in (("victoria", "/health"), ("alertmanager", "/-/ready"),
                               ("vmalert", "/health")):
                wait_until(lambda: http_ok(urls[name] + path), 60, what=f"{name} to answer")
            yield {"urls": urls, "hook": hook, "demo": demo}
        finally:
            demo.stop()
            hook.stop()


def test_vmalert_loads_every_shipped_rule(evaluated):
    groups = PrometheusAPI(evaluated["urls"]["vmalert"]).rule_groups()
    loaded = {(rule.get("name")) for group in groups for rule in group["rules"]}
    shipped = {rule.get("alert") or rule.get("record") for path in RULE_FILES
               for group in load_yaml(path)["groups"] for rule in group["rules"]}
    assert shipped <= loaded, sorted(shipped - loaded)


def test_recording_rules_evaluated_by_vmalert_land_in_victoria_metrics(evaluated):
    victoria = PrometheusAPI(evaluated["urls"]["victoria"])
    ratio = wait_until(lambda: victoria.query('job_operation:rag_query_errors:ratio_rate5m'
                                              '{job="rag-service"}'), 90,
                       what="the error ratio recorded by vmalert", retry_on=(OSError, APIError))
    # --fault errors: about a quarter of the queries fail
    assert any(float(series["value"][1]) > 0.05 for series in ratio), ratio


def test_the_error_alert_fires_on_vmalert_and_reaches_the_webhook(evaluated):
    hook = evaluated["hook"]
    alert = hook.wait_for(lambda a: a["labels"].get("alertname") == "RagHighErrorRate"
                          and a["status"] == "firing", FIRE_TIMEOUT)
    assert alert is not None, "RagHighErrorRate evaluated by vmalert never reached the webhook"
    assert {"job": "rag-service", "severity": "critical", "operation": "rag_search"}.items() \
        <= alert["labels"].items()
    assert "instance" not in alert["labels"]
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#raghigherrorrate"
    assert "rag-service" in alert["annotations"]["summary"]
    held = AlertmanagerAPI(evaluated["urls"]["alertmanager"]).alerts('alertname="RagHighErrorRate"')
    # the generator is vmalert (its alert API), not a Prometheus
    assert held and "/vmalert/api/v1/alert" in held[0]["generatorURL"], held
