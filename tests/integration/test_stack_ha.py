"""The high-availability stack (`m2_3_stack.py up --ha`) with the real daemons: two Prometheus
replicas, two Alertmanager peers clustered over gossip on 127.0.0.1, VictoriaMetrics receiving
remote write from both replicas, and two replicas of the demo service in one job, one of them
with a fault.

- the HA pair fires the service's alert to both peers, the webhook hears it exactly once, and
  the resolution exactly once; the alert is about the job, never one replica or one Prometheus;
- one Prometheus replica, then one Alertmanager peer are killed during an incident: the page
  still arrives exactly once, and no duplicate follows when the peer comes back;
- VictoriaMetrics answers every dashboard query, its totals are not doubled by the pair, and it
  has no gap while one replica is down (the other one filled it);
- a replica added to or removed from the file_sd targets is scraped, or dropped, without a
  restart of Prometheus; `status --json` names every component with URL, PID and health.
"""
from __future__ import annotations

import contextlib
import json
from datetime import datetime
import subprocess
import sys
import time

import pytest

from m2_3_stack import Stack
from ragmon.stack.api import PrometheusAPI
from ragmon.stack.process import free_port, wait_until
from ragmon.stack.webhook import WebhookReceiver
from tests.conftest import make_settings, require_binaries
from tests.stack_demo import Demo
from tests.stack_promql import WORKSPACE, dashboard_targets, substitute

JOB = "rag-service"
ALERT = "RagHighErrorRate"
FIRE_TIMEOUT, RESOLVE_TIMEOUT = 120, 180  # generous deadlines, not timed assertions
# After a notification, the second Alertmanager peer waits its position x --cluster.peer-timeout
# (5 s in fast mode) before it would send, and a group is flushed again after group_interval
# (15 s in fast HA mode): a duplicate would arrive within this.
DUPLICATE_WINDOW = 25
OUTAGE_SECONDS = 60  # how long one Prometheus replica stays down


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    require_binaries("prometheus", "prometheus-alertmanager", "prometheus-pushgateway",
                     "victoria-metrics")
    workdir = tmp_path_factory.mktemp("stack-ha")
    hook = WebhookReceiver().start()
    healthy = Demo(free_port(), workdir, instance="replica-1", qps=5)
    faulty = Demo(free_port(), workdir, instance="replica-2", qps=5)
    stack = Stack(workdir / "stack", app_targets={JOB: [healthy.target, faulty.target]}, fast=True,
                  ha=True, ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0,
                                  "node_exporter": 0},
                  extra_receiver_url=hook.url, settings=make_settings())
    try:
        stack.up()
        healthy.start()
        faulty.start()
        yield {"stack": stack, "hook": hook, "healthy": healthy, "faulty": faulty,
               "workdir": workdir}
    finally:
        healthy.stop()
        faulty.stop()
        stack.down()
        hook.stop()


def _ours(alert: dict) -> bool:
    return alert.get("labels", {}).get("alertname") == ALERT


def _main_operation(alert: dict) -> bool:
    """The alert of the demo's busiest operation. The demo's streaming operation fails too, but
    on a handful of queries its ratio flickers; it joins the same group (grouped by alertname, job
    and severity), and Alertmanager re-sends the group when it changes, which is not a page."""
    return _ours(alert) and alert["labels"].get("operation") == "rag_search"


def _of_incident(alert: dict, started: float) -> bool:
    """Our alert, begun in the incident that started at `started` (Unix time)."""
    begun = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
    return _ours(alert) and begun >= started - 1.0


def notifications(hook: WebhookReceiver, since: int = 0, started: float = 0.0) -> list[dict]:
    """Notifications from the extra webhook receiver that carry our alert, of an incident that
    started at `started`: a late re-send of an earlier incident's alerts is not one. Each is
    marked with `started`, since one may still carry the earlier incident's resolved alert next
    to this one's (Alertmanager keeps a resolved alert in its group until it was notified)."""
    return [dict(n, _incident_started=started) for n in hook.notifications[since:]
            if n.get("receiver") == "extra-webhooks"
            and any(_of_incident(a, started) for a in n.get("alerts", []))]


def duplicates(found: list[dict]) -> list[dict]:
    """Notifications that repeat the one before them word for word (group, status, alerts with
    their states and start times): what a second Prometheus or Alertmanager sending the same page looks
    like. A group re-sent because one of its alerts changed is not a repeat, and neither is one
    whose small operation's alert fired and resolved again in between (a new startsAt): on the
    fast stack that operation's few queries sit near the alert's volume guard."""
    repeated, previous = [], None
    for note in found:
        key = (note["groupKey"], note["status"],
               frozenset((json.dumps(a["labels"], sort_keys=True), a["status"], a.get("startsAt"))
                         for a in note["alerts"]))
        if key == previous:
            repeated.append(note)
        previous = key
    return repeated


def summary(found: list[dict]) -> list:
    """The notifications in short, for assertion messages."""
    return [(n["status"], [(a["status"], a["labels"].get("operation"), a["startsAt"], a["endsAt"])
                           for a in n["alerts"]]) for n in found]


def statuses(found: list[dict]) -> list[str]:
    """The states the main operation's alert was notified in, each change once: a page that
    was sent twice (by the two Prometheus or the two Alertmanagers) shows as firing, firing."""
    repeated = duplicates(found)
    changes: list[str] = []
    for note in found:
        for alert in note["alerts"]:
            if _main_operation(alert) and _of_incident(alert, note.get("_incident_started", 0.0)):
                if (not changes or changes[-1] != alert["status"]
                        or any(note is copy for copy in repeated)):
                    changes.append(alert["status"])
    return changes


def incident(ha: dict, during=None) -> tuple[list[dict], dict]:
    """Starts the fault on one replica, waits for the page, calls `during` (kills, restarts),
    stops the fault, waits for the resolution and the duplicate window. Returns our alert's
    notifications of this incident and what `during` returned."""
    hook, faulty = ha["hook"], ha["faulty"]
    start, started = hook.mark(), time.time()
    faulty.stop()
    faulty.start(fault="errors")
    context = during() if during else {}
    fired = hook.wait_for(lambda a: _ours(a) and a["status"] == "firing", FIRE_TIMEOUT, since=start)
    assert fired is not None, f"{ALERT} never reached the webhook"
    if isinstance(context, dict) and callable(context.get("after_firing")):
        context["after_firing"]()
    # a second copy of the page would come within the duplicate window
    hook.wait_for(lambda a: False, DUPLICATE_WINDOW, since=start)
    recovered = hook.mark()
    faulty.restart_without_fault()
    resolved = hook.wait_for(lambda a: _ours(a) and a["status"] == "resolved", RESOLVE_TIMEOUT,
                             since=recovered)
    assert resolved is not None, f"{ALERT} never resolved at the webhook"
    hook.wait_for(lambda a: False, DUPLICATE_WINDOW, since=recovered)
    return notifications(hook, start, started), context


@pytest.fixture(scope="module")
def first_incident(ha):
    return incident(ha)[0]


def test_the_ha_pair_pages_exactly_once_and_resolves_once(first_incident):
    assert statuses(first_incident).count("firing") == 1, summary(first_incident)
    assert statuses(first_incident).count("resolved") == 1, summary(first_incident)
    assert not duplicates(first_incident)


def test_the_page_is_about_the_service_not_a_replica_or_a_prometheus(first_incident, ha):
    labels = [a["labels"] for n in first_incident for a in n["alerts"] if _ours(a)]
    for alert in labels:
        assert alert["job"] == JOB
        assert "instance" not in alert and "replica" not in alert, alert
    # both Prometheus replicas did evaluate and send it: the cluster deduplicated it
    for name in ("prometheus", "prometheus_2"):
        fired = ha["stack"].api(name).query(f'max_over_time(ALERTS{{alertname="{ALERT}",'
                                            f'alertstate="firing"}}[10m])')
        assert fired, f"{name} never fired {ALERT}: the pair was not both sending"


@pytest.fixture(scope="module")
def failover_incident(ha, first_incident):
    """The second incident: replica a of Prometheus and the first Alertmanager peer die as the
    fault starts; the peer comes back once the page went out, Prometheus after OUTAGE_SECONDS."""
    stack = ha["stack"]
    outage = {}

    def kill():
        outage["start"] = time.time()
        assert stack.stop_component("prometheus")
        assert stack.stop_component("alertmanager")

        def after_firing():
            outage["page_mark"] = ha["hook"].mark()
            stack.start_component("alertmanager")
            # the peer rejoined the cluster and learned what was sent before it sends anything
            wait_until(lambda: len(stack.alertmanager().cluster_peers()) == 2, 60,
                       what="the restarted peer to rejoin the cluster")
            left = outage["start"] + OUTAGE_SECONDS - time.time()
            time.sleep(max(0.0, left))
            outage["end"] = time.time()
            stack.start_component("prometheus")
        return {"after_firing": after_firing, **outage}

    found, _ = incident(ha, during=kill)
    return found, outage


def test_killing_a_prometheus_and_a_peer_still_pages_exactly_once(failover_incident):
    found, outage = failover_incident
    assert statuses(found).count("firing") == 1, summary(found)
    assert statuses(found).count("resolved") == 1, summary(found)
    assert not duplicates(found)
    assert outage["end"] - outage["start"] >= OUTAGE_SECONDS


def test_victoria_metrics_has_every_panel_without_gap_while_a_replica_is_down(failover_incident, ha):
    _, outage = failover_incident
    vm = ha["stack"].api("victoria_metrics")
    step = 2
    expected = range(int(outage["start"]) + step, int(outage["end"]) - step, step)
    variables = {"job": JOB, "service": ".*", "node": ".*"}
    gaps = {}
    for panel, target in dashboard_targets():
        expr = substitute(target["expr"], "10s", variables)
        series = vm.query_range(expr, outage["start"], outage["end"], step)
        seen = {int(float(t)) for s in series for t, _ in s["values"]}
        missing = [t for t in expected if not {t - 1, t, t + 1} & seen]
        if missing:
            gaps[f"{panel['title']} {target['refId']}"] = f"{len(missing)} steps, e.g. {missing[:3]}"
    assert not gaps, f"panels with gaps while one replica was down: {json.dumps(gaps, indent=1)}"


def test_every_dashboard_query_returns_data_from_victoria_metrics(ha, first_incident):
    vm = ha["stack"].api("victoria_metrics")
    variables = {"job": JOB, "service": ".*", "node": ".*"}
    pending = {(panel["title"], target["refId"]): substitute(target["expr"], "10s", variables)
               for panel, target in dashboard_targets()}

    def all_have_data() -> bool:
        for key, expr in list(pending.items()):
            if vm.query(expr):
                del pending[key]
        return not pending

    with contextlib.suppress(TimeoutError):
        wait_until(all_have_data, timeout=60, interval=1.0)
    assert not pending, f"queries without data on VictoriaMetrics: {json.dumps(pending, indent=1)}"


def demo_total(demo: Demo) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request
    with urllib.request.urlopen(f"http://{demo.target}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "rag_queries"
               for s in f.samples if s.name == "rag_queries_total")


def test_totals_in_victoria_metrics_are_not_doubled_by_the_pair(ha, first_incident):
    stack, demo = ha["stack"], ha["healthy"]  # the healthy replica never restarts
    vm = stack.api("victoria_metrics")
    expr = f'sum(rag_queries_total{{job="{JOB}",instance="{demo.target}"}})'
    before = demo_total(demo)
    stored = vm.value(expr)
    after = demo_total(demo)
    # what VictoriaMetrics holds lags the demo by at most a scrape, a remote-write batch and the
    # query latency offset (1 s each in fast mode): at 5 q/s, well under 10 s of queries
    assert before - 10 * demo.qps <= stored <= after, (before, stored, after)
    # one sample per second per series, not one from each replica
    counts = vm.query(f'count_over_time(up{{job="{JOB}"}}[30s])')
    assert counts and all(float(r["value"][1]) <= 33 for r in counts), counts
    assert not vm.query('count({replica!=""})'), "the replica label must not reach the long-term store"


def test_replicas_come_and_go_through_file_sd_without_a_restart(ha, tmp_path):
    stack = ha["stack"]
    pids = {name: stack._pid_file(name).process().pid for name in ("prometheus", "prometheus_2")}
    extra = Demo(free_port(), tmp_path, instance="replica-3").start()
    try:
        stack.add_target(extra.target)
        assert extra.target in stack.targets()
        for name in ("prometheus", "prometheus_2"):
            api = stack.api(name)
            wait_until(lambda: api.query(f'up{{instance="{extra.target}"}} == 1'), 60,
                       what=f"{name} to scrape the added replica")
        stack.remove_target(extra.target)
        for name in ("prometheus", "prometheus_2"):
            api = stack.api(name)
            wait_until(lambda: not any(t["labels"].get("instance") == extra.target
                                       for t in api.targets()), 60,
                       what=f"{name} to drop the removed replica")
    finally:
        extra.stop()
    assert {name: stack._pid_file(name).process().pid for name in pids} == pids, \
        "Prometheus was restarted"


def test_status_json_lists_every_component_with_url_pid_and_health(ha):
    stack = ha["stack"]
    result = subprocess.run([sys.executable, str(WORKSPACE / "m2_3_stack.py"), "status", "--json",
                             "--workdir", str(stack.workdir)], cwd=WORKSPACE, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    assert {"prometheus", "prometheus_2", "alertmanager", "alertmanager_2", "victoria_metrics",
            "pushgateway"} <= set(components)
    for name, component in components.items():
        if name == "node_exporter" and component["url"] is None:
            continue
        assert component["running"] and component["healthy"], component
        assert component["pid"] == stack._pid_file(name).process().pid
        assert component["url"] == stack.urls[name]
    assert {components["prometheus"]["replica"], components["prometheus_2"]["replica"]} == {"a", "b"}
    assert PrometheusAPI(components["victoria_metrics"]["url"]).query("vector(1)")


def test_from_a_slow_query_exemplar_to_its_request_record(ha, first_incident):
    """Prometheus stores the latency histogram's exemplars; the slowest one's request_id leads,
    through `m2_3_report.py show`, to that request's record in the replica's request log."""
    prometheus = ha["stack"].api("prometheus_2")  # the replica that was never restarted
    now = time.time()
    found = prometheus.query_exemplars(f'rag_query_duration_seconds_bucket{{job="{JOB}"}}',
                                       now - 600, now)
    exemplars = [(series["seriesLabels"], exemplar) for series in found
                 for exemplar in series["exemplars"]]
    assert exemplars, "no exemplars stored: is the demo scraped as OpenMetrics?"
    labels, slowest = max(exemplars, key=lambda pair: float(pair[1]["value"]))
    request_id = slowest["labels"]["request_id"]
    demo = next(d for d in (ha["healthy"], ha["faulty"]) if d.target == labels["instance"])
    result = subprocess.run([sys.executable, str(WORKSPACE / "m2_3_report.py"), "show", request_id,
                             "--format", "json", "--log-dir", str(demo.log_dir / demo.instance)],
                            cwd=WORKSPACE, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(result.stdout)
    assert record["request_id"] == request_id
    assert record["total_time"] == pytest.approx(float(slowest["value"]), abs=1e-6)
