"""Rendering the shipped configs for the local stack (ragmon/stack_config.py): loopback targets,
fast mode, Alertmanager receivers from settings. The rendered files are checked with the real
promtool and amtool; no daemon is started here."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest
import yaml

from ragmon.stack.render import (ALERTMANAGER_FILE, FAST_WINDOWS, PROMETHEUS_FILE,
                                 RULE_FILES, StackConfigError, configured_integrations, fast_expr,
                                 fast_for,
                                 load_yaml, normalise_app_jobs, render_alertmanager,
                                 render_prometheus, render_rules)
from tests.conftest import make_settings, require_binaries
from tests.stack_promql import WORKSPACE, parse_duration, range_windows

PORTS = {"prometheus": 19090, "alertmanager": 19093, "pushgateway": 19091, "node_exporter": 19100}
SLACK = "https://hooks.slack.com/services/T000/B000/XXXX"
PD_KEY = "0123456789abcdef0123456789abcdef"


def need(binary: str) -> str:
    return require_binaries(binary)[0]


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def targets(config: dict) -> dict[str, list[str]]:
    return {job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]]
            for job in config["scrape_configs"]}


# --- prometheus.yml -------------------------------------------------------------------------------

def test_targets_are_rewritten_for_loopback():
    config = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=["/r/a.yml"],
                               app_jobs=normalise_app_jobs(["127.0.0.1:18000", "127.0.0.1:18001"]))
    assert targets(config) == {
        "rag-service": ["127.0.0.1:18000", "127.0.0.1:18001"], "prometheus": ["127.0.0.1:19090"],
        "alertmanager": ["127.0.0.1:19093"], "node-exporter": ["127.0.0.1:19100"],
        "pushgateway": ["127.0.0.1:19091"]}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert config["rule_files"] == ["/r/a.yml"]
    assert "host.docker.internal" not in yaml.safe_dump(config)
    pushgateway = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway["honor_labels"] is True
    assert config["global"]["scrape_interval"] == "15s"  # production values unless fast


def test_default_app_target_is_the_shipped_one_on_loopback_and_node_exporter_can_be_left_out():
    config = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=[],
                               node_exporter=False)
    assert targets(config)["rag-service"] == ["127.0.0.1:8000"]
    assert "node-exporter" not in targets(config)


def test_several_apps_become_separate_jobs():
    config = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=[],
                               app_jobs=normalise_app_jobs({"rag-a": ["127.0.0.1:1"], "rag-b": "127.0.0.1:2"}))
    found = targets(config)
    assert found["rag-a"] == ["127.0.0.1:1"] and found["rag-b"] == ["127.0.0.1:2"]
    assert "rag-service" not in found


@pytest.mark.parametrize("bad, expected", [
    (["localhost"], "is not HOST:PORT"), (["127.0.0.1:99999"], "is not HOST:PORT"),
    ("127.0.0.1:8000", "is a string"), ({"bad job!": ["127.0.0.1:1"]}, "job name"),
])
def test_bad_app_targets_are_refused_with_the_value_named(bad, expected):
    with pytest.raises(StackConfigError, match=expected):
        normalise_app_jobs(bad)


def test_fast_mode_uses_one_second_intervals():
    config = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=[], fast=True)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["global"]["scrape_timeout"] == "1s"
    assert all("scrape_interval" not in job for job in config["scrape_configs"])


@pytest.mark.parametrize("fast", [False, True])
def test_rendered_config_and_rules_pass_promtool(tmp_path, fast):
    promtool = need("promtool")
    rule_paths = []
    for source in RULE_FILES:
        rule_paths.append(tmp_path / source.name)
        write(rule_paths[-1], render_rules(load_yaml(source), fast))
    config = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=PORTS, rule_files=rule_paths, fast=fast)
    path = write(tmp_path / "prometheus.yml", config)
    result = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- fast rules -----------------------------------------------------------------------------------

def test_fast_rules_shorten_every_window_and_for_but_keep_names():
    for source in RULE_FILES:
        shipped, fast = load_yaml(source), render_rules(load_yaml(source), fast=True)
        for group, fast_group in zip(shipped["groups"], fast["groups"]):
            for rule, fast_rule in zip(group["rules"], fast_group["rules"]):
                assert rule.get("record") == fast_rule.get("record")
                assert rule.get("alert") == fast_rule.get("alert")
                for window in range_windows(fast_rule["expr"]):
                    assert parse_duration(window) <= 90, fast_rule["expr"]
                if "for" in rule:
                    assert 2 <= parse_duration(fast_rule["for"]) <= 15, fast_rule["for"]
                    assert parse_duration(fast_rule["for"]) <= parse_duration(rule["for"])
                assert len(range_windows(rule["expr"])) == len(range_windows(fast_rule["expr"]))


@pytest.mark.parametrize("production, fast", [("1m", "2s"), ("5m", "5s"), ("10m", "10s"),
                                              ("15m", "15s"), ("1h30m", "90s")])
def test_fast_for_is_a_sixtieth_of_production_and_at_least_2s(production, fast):
    assert fast_for(production) == fast


def test_fast_windows_keep_the_burn_rate_windows_in_order():
    order = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    fast = [parse_duration(FAST_WINDOWS[w]) for w in order]
    assert fast == sorted(fast) and len(set(fast)) == len(fast)


def test_a_window_without_a_fast_equivalent_is_an_error():
    with pytest.raises(StackConfigError, match=r"\[7d\].*FAST_WINDOWS"):
        fast_expr("rate(rag_queries_total[7d])")


def test_rendering_leaves_the_shipped_files_untouched(tmp_path, settings):
    from m2_3_stack import Stack
    shipped = [PROMETHEUS_FILE, ALERTMANAGER_FILE, *RULE_FILES]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped}
    Stack(workdir=tmp_path, fast=True, settings=settings)._render(PORTS, node_exporter=True)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped}
    assert before == after
    rendered = load_yaml(tmp_path / "config" / "alert_rules.yml")
    assert all(parse_duration(r["for"]) <= 15 for g in rendered["groups"] for r in g["rules"])
    assert stat.S_IMODE((tmp_path / "config" / "alertmanager.yml").stat().st_mode) == 0o600


# --- alertmanager.yml -----------------------------------------------------------------------------

def amtool_check(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = write(tmp_path / "alertmanager.yml", config)
    return subprocess.run([need("amtool"), "check-config", path], capture_output=True, text=True, timeout=60)


def routes(tmp_path, config: dict, *labels: str) -> list[str]:
    path = write(tmp_path / "routes.yml", config)
    result = subprocess.run([need("amtool"), "config", "routes", "test", f"--config.file={path}", *labels],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(",")


def test_unconfigured_receivers_are_inert(tmp_path, settings):
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings)
    assert configured_integrations(config) == {"default": ["webhook"], "page": ["webhook"],
                                               "ticket": ["webhook"], "deadmans-switch": ["webhook"]}
    assert "host.docker.internal" not in yaml.safe_dump(config)
    assert all(hook["send_resolved"] is True for r in config["receivers"] for hook in r["webhook_configs"]
               if r["name"] != "deadmans-switch")
    assert amtool_check(tmp_path, config).returncode == 0


def test_configured_receivers_are_filled_in_and_valid(tmp_path):
    settings = make_settings(SLACK_WEBHOOK_URL=SLACK, SLACK_CHANNEL="#rag-alerts",
                             PAGERDUTY_ROUTING_KEY=PD_KEY, ALERT_EMAIL_TO="oncall@example.com",
                             ALERT_EMAIL_FROM="alerts@example.com", SMTP_SMARTHOST="smtp.example.com:587",
                             SMTP_USERNAME="alerts", SMTP_PASSWORD="s3cret",
                             ALERT_WEBHOOK_URL="http://hooks.internal:9000/am")
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings)
    assert configured_integrations(config) == {
        "default": ["webhook"], "page": ["email", "pagerduty", "slack", "webhook"],
        "ticket": ["email", "slack", "webhook"], "deadmans-switch": ["webhook"]}
    page = next(r for r in config["receivers"] if r["name"] == "page")
    assert page["slack_configs"][0]["channel"] == "#rag-alerts"
    assert page["pagerduty_configs"][0]["routing_key"] == PD_KEY
    assert page["email_configs"][0]["auth_password"] == "s3cret"
    assert all(c["send_resolved"] for key in ("slack_configs", "pagerduty_configs", "email_configs",
                                              "webhook_configs") for c in page[key])
    assert page["webhook_configs"][0]["url"] == "http://hooks.internal:9000/am"
    result = amtool_check(tmp_path, config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dead_mans_switch_has_its_own_url_and_the_watchdog_goes_only_there(tmp_path):
    heartbeat = "https://hc-ping.example.com/0d1b4c2e"
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(
        ALERT_WEBHOOK_URL="http://hooks.internal:9000/am", DEADMANS_SWITCH_URL=heartbeat))
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls["deadmans-switch"] == heartbeat and urls["default"] == "http://hooks.internal:9000/am"
    assert routes(tmp_path, config, "severity=warning", "alertname=RagWatchdog") == ["deadmans-switch"]
    assert amtool_check(tmp_path, config).returncode == 0


@pytest.mark.parametrize("env, expected", [
    ({"ALERT_EMAIL_TO": "oncall@example.com"}, "ALERT_EMAIL_FROM, SMTP_SMARTHOST are empty"),
    ({"ALERT_EMAIL_TO": "oncall", "ALERT_EMAIL_FROM": "a@example.com", "SMTP_SMARTHOST": "smtp:25"},
     "ALERT_EMAIL_TO='oncall' is not an email address"),
    ({"ALERT_EMAIL_TO": "o@example.com", "ALERT_EMAIL_FROM": "a@example.com", "SMTP_SMARTHOST": "smtp"},
     "SMTP_SMARTHOST='smtp' is not HOST:PORT"),
    ({"SLACK_WEBHOOK_URL": "hooks.slack.com/x"}, "SLACK_WEBHOOK_URL='hooks.slack.com/x' is not an http"),
    ({"PAGERDUTY_ROUTING_KEY": "not a key"}, "PAGERDUTY_ROUTING_KEY=not ... is not a PagerDuty"),
    ({"ALERT_WEBHOOK_URL": "ftp://x"}, "ALERT_WEBHOOK_URL='ftp://x'"),
])
def test_half_configured_receivers_are_refused_with_a_fix(env, expected):
    with pytest.raises(StackConfigError) as error:
        render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(**env))
    assert expected in str(error.value)


def test_extra_webhook_receives_every_alert_besides_normal_routing(tmp_path, settings):
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings,
                                 extra_webhook_urls=["http://127.0.0.1:5999/hook"])
    assert routes(tmp_path, config, "severity=critical", "alertname=X") == ["extra-webhooks", "page"]
    assert routes(tmp_path, config, "severity=warning", "alertname=X") == ["extra-webhooks", "ticket"]
    assert amtool_check(tmp_path, config).returncode == 0


def test_fast_alertmanager_groups_and_sends_within_seconds(settings):
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings, fast=True)
    timers = [config["route"]] + config["route"]["routes"]
    for route in timers:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                assert parse_duration(route[key]) <= 3600
    assert config["route"]["group_wait"] == "1s"
    assert config["inhibit_rules"] == load_yaml(ALERTMANAGER_FILE)["inhibit_rules"]


def test_render_alertmanager_cli_writes_a_private_file_from_the_environment(tmp_path):
    out = tmp_path / "alertmanager.local.yml"
    # every receiver setting given, so a developer's .env cannot change the outcome
    receivers = {name: "" for name in ("ALERT_WEBHOOK_URL", "DEADMANS_SWITCH_URL", "SLACK_CHANNEL",
                                       "PAGERDUTY_ROUTING_KEY",
                                       "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM", "SMTP_SMARTHOST",
                                       "SMTP_USERNAME", "SMTP_PASSWORD")}
    env = {**os.environ, **receivers, "SLACK_WEBHOOK_URL": SLACK}
    result = subprocess.run([sys.executable, str(WORKSPACE / "m2_3_stack.py"), "render-alertmanager",
                             "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # readable by the Alertmanager container's user (nobody) and by no one else
    if os.geteuid() == 0:
        assert out.stat().st_uid == 65534
    else:
        assert "sudo chown 65534" in result.stderr
    config = load_yaml(out)
    assert configured_integrations(config)["page"] == ["slack", "webhook"]
    # for Docker: the webhook stays on the host as the containers see it
    assert "host.docker.internal" in out.read_text()
    assert "page" in result.stdout and "slack" in result.stdout


@pytest.mark.parametrize("env, expected", [
    ({"ALERT_WEBHOOK_URL": "https://hooks.example.com/am?token=s3cr3t"},
     "ALERT_WEBHOOK_URL carries a credential in its query parameter 'token'"),
    ({"DEADMANS_SWITCH_URL": "https://user:pw@hc.example.com/ping"},
     "DEADMANS_SWITCH_URL carries a credential in its user:password part"),
    ({"ALERT_WEBHOOK_TOKEN": "abc"}, "ALERT_WEBHOOK_TOKEN is set but ALERT_WEBHOOK_URL is empty"),
])
def test_credentials_in_webhook_urls_are_refused_with_a_fix(env, expected, tmp_path):
    with pytest.raises(StackConfigError) as error:
        render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(**env),
                            credentials_dir=tmp_path)
    assert expected in str(error.value)
    assert "s3cr3t" not in str(error.value) and "pw@" not in str(error.value)


def test_a_webhook_token_is_read_from_a_file_as_a_bearer_credential(tmp_path):
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(
        ALERT_WEBHOOK_URL="https://hooks.example.com/am", ALERT_WEBHOOK_TOKEN="s3cr3t"),
        credentials_dir=tmp_path)
    assert "s3cr3t" not in yaml.safe_dump(config)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if receiver["name"] == "deadmans-switch":
                assert "http_config" not in hook
            else:
                assert hook["http_config"] == {"authorization": {
                    "type": "Bearer", "credentials_file": str(tmp_path / "alert-webhook.token")}}
    assert amtool_check(tmp_path, config).returncode == 0


def test_the_local_stack_points_unset_webhooks_at_its_own_receiver():
    config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), make_settings(),
                                 local_receiver="http://127.0.0.1:5999")
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls == {"default": "http://127.0.0.1:5999/alerts", "page": "http://127.0.0.1:5999/alerts",
                    "ticket": "http://127.0.0.1:5999/alerts",
                    "deadmans-switch": "http://127.0.0.1:5999/heartbeat"}
