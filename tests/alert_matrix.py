"""The live alert matrix: the fast local stack (real Prometheus and Alertmanager, the shipped rules
rendered for 1 s scrapes) over the demo service, first healthy, then each `--fault` in turn.

For every alert it records when Prometheus first held it firing, when Alertmanager first held
it, when the webhook got the notification (seconds after the fault began) and, after recovery,
when the webhook got its resolution (seconds after the fault stopped). Used by
tests/integration/test_alert_matrix.py (which asserts) and bench/bench_alerts.py (which prints).

A fault begins when the stack's target list switches from the healthy demo to one started with
`--fault` (file_sd: Prometheus follows the file at once, no restart and no scrape gap, so
RagTargetDown has nothing to see); it stops when the list switches back. The healthy demo runs
throughout. node-exporter stays off: the host alerts judge the machine the test runs on.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ragmon.stack.process import free_port, wait_until
from ragmon.stack.runner import Stack
from ragmon.stack.webhook import WebhookReceiver
from tests.conftest import make_settings
from tests.stack_demo import Demo

JOB = "rag-service"
WATCHDOG = "RagWatchdog"
# fault -> (the alert it must fire, the alerts it truly implies and may fire besides)
EXPECTED = {
    "latency": ("RagHighQueryLatency", {"RagLatencyBudgetBurn"}),  # slow queries break the SLO
    "errors": ("RagHighErrorRate", {"RagAvailabilityBudgetBurn"}),  # failures break the SLO
    "cache": ("RagLowCacheHitRate", set()),
    "cost": ("RagDailySpendOverBudget", set()),
    "ratelimit": ("RagRateLimitLow", set()),
    # a degraded index: its answers score lower, and it shows in every quality signal
    "quality": ("RagQualityScoreDrop", {"RagEmptyRetrievalRateHigh", "RagNegativeFeedbackRateHigh",
                                        "RagIndexStale"}),
}
# fault -> implied alerts it must fire too (within ALSO_FIRE_WITHIN s), not only may
ALSO_FIRES = {"quality": {"RagEmptyRetrievalRateHigh", "RagNegativeFeedbackRateHigh",
                          "RagIndexStale"}}
HEALTHY_SECONDS = 240
FIRE_WITHIN = 60        # seconds from the fault to its alert at the webhook
ALSO_FIRE_WITHIN = 90   # seconds from the fault to each of ALSO_FIRES at the webhook
RESOLVE_WITHIN = 120    # seconds from recovery to the resolution at the webhook
HOLD_SECONDS = 15       # the fault keeps running this long after its alert arrived
POLL_SECONDS = 0.5


@dataclass
class AlertTimes:
    """Seconds after the phase began (the fault for firing, the recovery for resolved)."""
    prometheus: float | None = None
    alertmanager: float | None = None
    webhook: float | None = None
    resolved: float | None = None


@dataclass
class Phase:
    name: str                      # "healthy" or the fault
    began: float                   # time.monotonic()
    recovered: float | None = None
    seconds: float = 0.0
    alerts: dict[str, AlertTimes] = field(default_factory=dict)


class Recorder:
    """Polls Prometheus and Alertmanager, and hears the webhook, into the current phase."""

    def __init__(self, stack: Stack, hook: WebhookReceiver):
        self.stack, self.hook = stack, hook
        self.phases: list[Phase] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="alert-matrix")

    def begin(self, name: str) -> Phase:
        with self._lock:
            phase = Phase(name, time.monotonic())
            self.phases.append(phase)
            return phase

    def _times(self, phase: Phase, alertname: str) -> AlertTimes:
        return phase.alerts.setdefault(alertname, AlertTimes())

    def on_alert(self, alert: dict) -> None:
        """WebhookReceiver's callback: one alert of a notification, as it arrives."""
        name = alert.get("labels", {}).get("alertname")
        if alert.get("_path") != "/alerts" or name is None or name == WATCHDOG:
            return
        now = time.monotonic()
        with self._lock:
            if not self.phases:
                return
            phase = self.phases[-1]
            if alert.get("status") == "firing":
                times = self._times(phase, name)
                if times.webhook is None:
                    times.webhook = now - phase.began
            elif phase.recovered is not None and name in phase.alerts:
                times = phase.alerts[name]
                if times.resolved is None:
                    times.resolved = now - phase.recovered

    def _poll(self) -> None:
        prometheus, alertmanager = self.stack.api(), self.stack.alertmanager()
        while not self._stop.wait(POLL_SECONDS):
            try:
                in_prometheus = {a["labels"]["alertname"] for a in prometheus.alerts()
                                 if a["state"] == "firing"}
                in_alertmanager = {a["labels"]["alertname"] for a in alertmanager.alerts()
                                   if a["status"]["state"] in ("active", "suppressed")}
            except Exception:  # noqa: BLE001 (a slow answer under load: the next poll counts)
                continue
            now = time.monotonic()
            with self._lock:
                if not self.phases:
                    continue
                phase = self.phases[-1]
                for source, names in (("prometheus", in_prometheus),
                                      ("alertmanager", in_alertmanager)):
                    for name in names - {WATCHDOG}:
                        times = self._times(phase, name)
                        if getattr(times, source) is None:
                            setattr(times, source, now - phase.began)

    def firing_now(self) -> set[str]:
        """Alerts other than the watchdog that Prometheus holds pending or firing."""
        return {a["labels"]["alertname"] for a in self.stack.api().alerts()} - {WATCHDOG}

    def __enter__(self) -> "Recorder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_matrix(workdir: Path, *, healthy_seconds: float = HEALTHY_SECONDS, faults=tuple(EXPECTED),
               qps: float = 5.0, log=print) -> list[Phase]:
    """Runs the matrix; returns the phases (healthy first). Every process stops on return."""
    healthy = Demo(free_port(), workdir, qps=qps)
    hook_holder: dict = {}
    with WebhookReceiver(on_alert=lambda a: hook_holder["recorder"].on_alert(a)) as hook:
        stack = Stack(workdir / "stack", app_targets={JOB: [healthy.target]}, fast=True,
                      extra_receiver_url=hook.url, settings=make_settings(), node_exporter=False,
                      ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0})
        faulty: Demo | None = None
        try:
            stack.up()
            healthy.start()
            recorder = hook_holder["recorder"] = Recorder(stack, hook)
            with recorder:
                wait_until(lambda: stack.query(f'up{{job="{JOB}"}} == 1'), timeout=60,
                           what="Prometheus to scrape the demo")
                phase = recorder.begin("healthy")
                log(f"healthy for {healthy_seconds:g} s")
                time.sleep(healthy_seconds)
                phase.seconds = time.monotonic() - phase.began
                for fault in faults:
                    faulty = Demo(free_port(), workdir, fault=fault, qps=qps).start()
                    _run_fault(stack, recorder, healthy, faulty, fault, log)
                    faulty.stop()
                    faulty = None
            return recorder.phases
        finally:
            if faulty is not None:
                faulty.stop()
            healthy.stop()
            stack.down()


def _run_fault(stack: Stack, recorder: Recorder, healthy: Demo, faulty: Demo, fault: str,
               log) -> None:
    own, implied = EXPECTED[fault]
    stack.set_targets([faulty.target], JOB)
    phase = recorder.begin(fault)
    log(f"--fault {fault}: waiting for {own}")

    def arrived(*names: str):
        def check() -> bool:
            return all(phase.alerts.get(n) is not None and phase.alerts[n].webhook is not None
                       for n in names)
        return check
    try:
        wait_until(arrived(own), timeout=FIRE_WITHIN, interval=POLL_SECONDS, what=own)
        also = ALSO_FIRES.get(fault, set())
        if also:
            wait_until(arrived(*also), interval=POLL_SECONDS, what=", ".join(sorted(also)),
                       timeout=max(0.0, ALSO_FIRE_WITHIN - (time.monotonic() - phase.began)))
        time.sleep(HOLD_SECONDS)  # the implied alerts, which take longer, get their chance
    except TimeoutError:
        pass  # recorded as not fired; the test says so
    stack.set_targets([healthy.target], JOB)
    phase.recovered = time.monotonic()
    phase.seconds = phase.recovered - phase.began
    log(f"--fault {fault}: recovered, waiting for every alert to resolve")

    def all_resolved() -> bool:
        fired = {n for n, t in phase.alerts.items() if t.webhook is not None}
        return (all(phase.alerts[n].resolved is not None for n in fired)
                and not recorder.firing_now())
    try:
        wait_until(all_resolved, timeout=RESOLVE_WITHIN, interval=POLL_SECONDS,
                   what="every alert to resolve")
    except TimeoutError:
        pass


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(phases: list[Phase]) -> str:
    """The matrix as a Markdown table: one row per phase and alert that fired in it."""
    rows = ["| phase | alert | expected | Prometheus firing s | Alertmanager s | webhook s "
            "| resolved s after recovery |",
            "|---|---|---|---:|---:|---:|---:|"]
    for phase in phases:
        own, implied = EXPECTED.get(phase.name, (None, set()))
        names = sorted(phase.alerts, key=lambda n: (n != own, n))
        if own and own not in names:
            names.insert(0, own)
        if not names:
            rows.append(f"| {phase.name} ({phase.seconds:.0f} s) | (none but {WATCHDOG}) | yes "
                        "| - | - | - | - |")
        for name in names:
            times = phase.alerts.get(name, AlertTimes())
            expected = "its own" if name == own else "implied" if name in implied else "NO"
            rows.append(f"| {phase.name} ({phase.seconds:.0f} s) | {name} | {expected} | "
                        f"{_seconds(times.prometheus)} | {_seconds(times.alertmanager)} | "
                        f"{_seconds(times.webhook)} | {_seconds(times.resolved)} |")
    return "\n".join(rows)


def problems(phases: list[Phase]) -> list[str]:
    """What the matrix breaks of the promise: healthy quiet, each fault its own alert within
    FIRE_WITHIN s (and ALSO_FIRES within ALSO_FIRE_WITHIN s) and only what it implies, each
    resolved within RESOLVE_WITHIN s of recovery."""
    found = []
    for phase in phases:
        fired = {n for n, t in phase.alerts.items()
                 if t.prometheus is not None or t.webhook is not None}
        if phase.name == "healthy":
            if fired:
                found.append(f"healthy traffic fired {sorted(fired)}")
            continue
        own, implied = EXPECTED[phase.name]
        times = phase.alerts.get(own)
        if times is None or times.webhook is None or times.webhook > FIRE_WITHIN:
            found.append(f"--fault {phase.name}: {own} did not reach the webhook within "
                         f"{FIRE_WITHIN} s ({_seconds(times and times.webhook)})")
        for name in sorted(ALSO_FIRES.get(phase.name, set())):
            times = phase.alerts.get(name)
            if times is None or times.webhook is None or times.webhook > ALSO_FIRE_WITHIN:
                found.append(f"--fault {phase.name}: {name} did not reach the webhook within "
                             f"{ALSO_FIRE_WITHIN} s ({_seconds(times and times.webhook)})")
        for name in sorted(fired - {own} - implied):
            found.append(f"--fault {phase.name} also fired {name}, which it does not imply")
        for name in sorted(fired):
            resolved = phase.alerts[name].resolved
            if phase.alerts[name].webhook is not None and (resolved is None
                                                           or resolved > RESOLVE_WITHIN):
                found.append(f"--fault {phase.name}: {name} did not resolve within "
                             f"{RESOLVE_WITHIN} s of recovery ({_seconds(resolved)})")
    return found
