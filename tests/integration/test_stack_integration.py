"""End to end on the real stack: the local stack in fast mode, the demo service (one normal
instance and one per fault, each its own job, all at once), a webhook receiver run by the test.

- every dashboard query, variables substituted, returns data from Prometheus's HTTP API;
- each of the five product-design alerts, driven by the demo's matching --fault, reaches the
  webhook through Alertmanager, and resolves after the fault stops (the demo restarts normally);
- the normal instance stays silent; the critical spend alert inhibits its own forecast warning;
- a batch-job metric pushed to the Pushgateway is queryable with the job label it pushed.

Fast mode (m2_3_stack.py --fast) gives 1 s scrapes and evaluations, windows of 20-90 s and each
`for` divided by 60 (at least 2 s); the daily-spend window (1d) becomes 60 s, so that alert
resolves a minute after the cost fault stops instead of a day later.
"""
from __future__ import annotations

import contextlib
import json
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from m2_3_stack import Stack
from ragmon.stack.process import free_port, wait_until
from ragmon.stack.webhook import WebhookReceiver
from tests.conftest import make_settings, require_binaries
from tests.stack_demo import Demo
from tests.stack_promql import dashboard_targets, substitute

NORMAL_JOB = "rag-service"
# fault -> the alert it must fire (name, severity, labels besides job)
FAULTS = {
    "latency": ("RagHighQueryLatency", "warning", {"operation": "rag_search"}),
    "errors": ("RagHighErrorRate", "critical", {"operation": "rag_search"}),
    "cache": ("RagLowCacheHitRate", "warning", {"cache_type": "semantic"}),
    "cost": ("RagDailySpendOverBudget", "critical", {}),
    "ratelimit": ("RagRateLimitLow", "warning", {"provider": "openai"}),
}
FIRE_TIMEOUT, RESOLVE_TIMEOUT = 120, 180  # generous deadlines, not timed assertions


def fault_job(fault: str) -> str:
    return f"rag-fault-{fault}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_binaries("prometheus", "prometheus-alertmanager", "prometheus-pushgateway",
                     "prometheus-node-exporter")
    workdir = tmp_path_factory.mktemp("stack-e2e")
    hook = WebhookReceiver().start()
    demos = {None: Demo(free_port(), workdir)}
    demos.update({fault: Demo(free_port(), workdir, fault=fault) for fault in FAULTS})
    jobs = {NORMAL_JOB if fault is None else fault_job(fault): [demo.target] for fault, demo in demos.items()}
    stack = Stack(workdir / "stack", app_targets=jobs, fast=True,
                  ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0, "node_exporter": 0},
                  extra_receiver_url=hook.url,
                  # Slack configured the way .env does it, pointed at the test's receiver
                  settings=make_settings(SLACK_WEBHOOK_URL=hook.base_url() + "/slack",
                                         SLACK_CHANNEL="#rag-alerts"))
    try:
        stack.up()
        for demo in demos.values():
            demo.start()
        yield {"stack": stack, "hook": hook, "demos": demos, "started": time.monotonic()}
    finally:
        for demo in demos.values():
            demo.stop()
        stack.down()
        hook.stop()


def matches(alert: dict, fault: str, status: str) -> bool:
    name, severity, extra = FAULTS[fault]
    wanted = {**extra, "alertname": name, "job": fault_job(fault), "severity": severity}
    return wanted.items() <= alert.get("labels", {}).items() and alert.get("status") == status


# --- the dashboard --------------------------------------------------------------------------------

def test_every_dashboard_query_returns_data(world):
    stack = world["stack"]
    assert "node_exporter" in stack.urls, "node-exporter must run for the host row"
    variables = {"job": NORMAL_JOB, "service": ".*", "node": ".*"}
    pending = {(panel["title"], target["refId"]): substitute(target["expr"], "10s", variables)
               for panel, target in dashboard_targets()}

    def all_have_data() -> bool:
        for key, expr in list(pending.items()):
            if stack.query(expr):
                del pending[key]
        return not pending

    # Errors are ~1.5% of queries: the error panels have data once the first one happened.
    with contextlib.suppress(TimeoutError):
        wait_until(all_have_data, timeout=120, interval=1.0)
    assert not pending, f"queries without data after 120 s: {json.dumps(pending, indent=1)}"


# --- the five product alerts, end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def fault_cycle(world):
    """Waits until each fault's alert reached the webhook, restarts every fault demo without its
    fault, and waits until each alert resolved. Returns fault -> (firing, resolved) payloads."""
    hook, demos = world["hook"], world["demos"]
    firing, resolved, notes = {}, {}, {}
    for fault in FAULTS:
        firing[fault] = hook.wait_for(lambda a: matches(a, fault, "firing"), timeout=FIRE_TIMEOUT)
    notes["inhibition"] = _forecast_inhibited(world)
    fault_stopped = hook.mark()  # only a resolution after this counts
    for fault in FAULTS:
        demos[fault].restart_without_fault()
    for fault in FAULTS:
        resolved[fault] = hook.wait_for(lambda a: matches(a, fault, "resolved"), timeout=RESOLVE_TIMEOUT,
                                        since=fault_stopped)
    return {"firing": firing, "resolved": resolved, **notes}


def _forecast_inhibited(world) -> dict | None:
    """Alertmanager's view of the cost job's forecast warning once the critical spend alert fires."""
    alertmanager = world["stack"].alertmanager()
    found = {}

    def suppressed() -> bool:
        for alert in alertmanager.alerts(filter=f'job="{fault_job("cost")}"'):
            if alert["labels"].get("alertname") == "RagDailySpendOverBudget":
                found[alert["labels"]["severity"]] = alert["status"]
        return found.get("warning", {}).get("state") == "suppressed"

    with contextlib.suppress(TimeoutError):  # the test asserts on what was found
        wait_until(suppressed, timeout=FIRE_TIMEOUT, interval=1.0)
    return found


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_alert_reaches_the_webhook(fault_cycle, fault):
    name, severity, labels = FAULTS[fault]
    alert = fault_cycle["firing"][fault]
    assert alert is not None, f"{name} for --fault {fault} did not reach the webhook"
    assert alert["_path"] == "/alerts"
    assert {**labels, "alertname": name, "job": fault_job(fault), "severity": severity}.items() \
        <= alert["labels"].items()
    notes = alert["annotations"]
    assert fault_job(fault) in notes["description"] and notes["summary"]
    assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}"


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_alert_resolves_after_the_fault_stops(fault_cycle, fault):
    name, severity, _labels = FAULTS[fault]
    assert fault_cycle["firing"][fault] is not None, f"{name} never fired"
    resolved = fault_cycle["resolved"][fault]
    assert resolved is not None, f"{name} for --fault {fault} did not resolve after the fault stopped"
    assert resolved["endsAt"] >= resolved["startsAt"]


def test_a_receiver_configured_in_env_delivers_too(fault_cycle, world):
    """SLACK_WEBHOOK_URL turned the Slack integration on: Alertmanager posts Slack messages."""
    def slack_error_page(body: dict) -> bool:
        return (body["_path"] == "/slack" and body.get("channel") == "#rag-alerts"
                and any("RagHighErrorRate" in a.get("title", "") and fault_job("errors") in a.get("title", "")
                        for a in body.get("attachments", [])))
    message = world["hook"].wait_for_notification(slack_error_page, timeout=FIRE_TIMEOUT)
    assert message is not None, "no Slack message for RagHighErrorRate"
    assert "failed over the last 5 minutes" in message["attachments"][0]["text"]


def test_critical_spend_alert_inhibits_its_forecast_warning(fault_cycle):
    status = fault_cycle["inhibition"]
    assert status.get("critical", {}).get("state") == "active", status
    assert status.get("warning", {}).get("state") == "suppressed", status
    assert status["warning"]["inhibitedBy"], status


def test_normal_traffic_fires_none_of_the_product_alerts(fault_cycle, world):
    quiet = {"RagHighQueryLatency", "RagHighErrorRate", "RagLowCacheHitRate",
             "RagDailySpendOverBudget", "RagRateLimitLow"}
    noisy = [a["labels"] for a in world["hook"].alerts
             if a["labels"].get("job") == NORMAL_JOB and a["labels"].get("alertname") in quiet]
    assert not noisy, f"normal traffic fired {noisy}"


# --- the Pushgateway ------------------------------------------------------------------------------

def test_a_pushed_batch_metric_is_queryable(world):
    stack = world["stack"]
    registry = CollectorRegistry()
    finished = Gauge("rag_eval_last_success_timestamp_seconds",
                     "When the nightly relevance evaluation last succeeded.", registry=registry)
    finished.set(1_700_000_000)
    push_to_gateway(stack.urls["pushgateway"], job="rag-nightly-eval", registry=registry)
    query = 'rag_eval_last_success_timestamp_seconds{job="rag-nightly-eval"}'
    assert wait_until(lambda: stack.query(query), timeout=60, interval=0.5), "pushed metric never appeared"
    result = stack.query(query)
    assert float(result[0]["value"][1]) == 1_700_000_000
    # honor_labels: the job is the batch job's, not the scrape job's ("pushgateway")
    assert result[0]["metric"]["job"] == "rag-nightly-eval"
