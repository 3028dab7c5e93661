"""Where the local stack's notifications go, on the real Alertmanager: a fresh stack delivers to
the webhook receiver it runs itself (so it never pages about undeliverable notifications), and
webhook tokens travel as Bearer credentials from private files, never shown on Alertmanager's
status page."""
from __future__ import annotations

import json
import stat
import urllib.request

import pytest

from m2_3_stack import Stack
from ragmon.stack.process import PidFile, free_port, wait_until
from ragmon.stack.webhook import WebhookReceiver
from tests.conftest import make_settings, require_binaries

REQUIRED = ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")
ALERT_TOKEN, HEARTBEAT_TOKEN = "tok-alert-7f3e9a1c", "tok-heartbeat-52b8d0e4"


@pytest.fixture(autouse=True)
def binaries_installed():
    require_binaries(*REQUIRED)


def free_ports() -> dict:
    return {name: 0 for name in ("prometheus", "alertmanager", "pushgateway", "node_exporter")}


def am_metric(stack: Stack, name: str) -> float:
    text = urllib.request.urlopen(stack.urls["alertmanager"] + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'integration="webhook"' in line)


def test_a_fresh_stack_delivers_every_notification_to_its_own_receiver(tmp_path):
    # nothing listens on the app target: RagTargetDown fires (a ticket) besides the watchdog
    stack = Stack(tmp_path / "stack", app_targets=[f"127.0.0.1:{free_port()}"], fast=True,
                  ports=free_ports(), settings=make_settings(), node_exporter=False)
    log = tmp_path / "stack" / "logs" / "webhook.log"
    try:
        stack.up()
        receiver_pid = PidFile(tmp_path / "stack" / "run" / "webhook.pid").process()
        assert receiver_pid is not None and stack.receiver_url
        assert wait_until(lambda: log.exists() and "FIRING   RagTargetDown" in log.read_text()
                          and "RagWatchdog" in log.read_text(), timeout=90), \
            log.read_text() if log.exists() else "no webhook log"
        assert am_metric(stack, "alertmanager_notifications_total") >= 2
        assert am_metric(stack, "alertmanager_notifications_failed_total") == 0
    finally:
        stopped = stack.down()
    assert stopped.get("webhook") is True
    assert not receiver_pid.is_running()


def test_webhook_tokens_are_sent_as_bearer_and_never_shown_on_the_status_page(tmp_path):
    with WebhookReceiver() as hook:
        settings = make_settings(ALERT_WEBHOOK_URL=hook.url, ALERT_WEBHOOK_TOKEN=ALERT_TOKEN,
                                 DEADMANS_SWITCH_URL=hook.base_url() + "/heartbeat",
                                 DEADMANS_SWITCH_TOKEN=HEARTBEAT_TOKEN)
        stack = Stack(tmp_path / "stack", app_targets=[f"127.0.0.1:{free_port()}"], fast=True,
                      ports=free_ports(), settings=settings, node_exporter=False)
        try:
            stack.up()
            assert stack.receiver_url is None  # ALERT_WEBHOOK_URL replaces the stack's own
            heartbeat = hook.wait_for(lambda a: a["_path"] == "/heartbeat", timeout=90)
            ticket = hook.wait_for(lambda a: a["_path"] == "/alerts"
                                   and a["labels"].get("alertname") == "RagTargetDown", timeout=90)
            assert heartbeat is not None and ticket is not None, hook.alerts
            by_path = {n["_path"]: n["_authorization"] for n in hook.notifications}
            assert by_path == {"/heartbeat": f"Bearer {HEARTBEAT_TOKEN}",
                               "/alerts": f"Bearer {ALERT_TOKEN}"}
            status = urllib.request.urlopen(stack.urls["alertmanager"] + "/api/v2/status",
                                            timeout=10).read().decode()
            original = json.loads(status)["config"]["original"]
            assert hook.url in original  # the page shows the URL, which holds nothing secret
            for token in (ALERT_TOKEN, HEARTBEAT_TOKEN):
                assert token not in status
            config_dir = tmp_path / "stack" / "config"
            for name in ("alert-webhook.token", "deadmans-switch.token", "alertmanager.yml"):
                assert stat.S_IMODE((config_dir / name).stat().st_mode) == 0o600, name
        finally:
            stack.down()
