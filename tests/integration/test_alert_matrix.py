"""The live alert matrix (tests/alert_matrix.py): the fast local stack over the demo, 4 minutes
healthy, then each of the six faults in turn. Healthy traffic fires nothing but the watchdog;
each fault's own alert reaches the webhook within 60 s and resolves within 120 s of recovery;
the quality fault fires the other quality alerts too (ALSO_FIRES, within 90 s); no fault fires
an alert it does not imply (EXPECTED). About 11 minutes: it runs once, and the tests below read
its phases."""
from __future__ import annotations

import pytest

from tests.alert_matrix import (ALSO_FIRE_WITHIN, ALSO_FIRES, EXPECTED, FIRE_WITHIN, RESOLVE_WITHIN,
                                problems, run_matrix, table)
from tests.conftest import require_binaries


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    require_binaries("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")
    phases = run_matrix(tmp_path_factory.mktemp("alert-matrix"), log=lambda text: None)
    print("\n" + table(phases))
    return {phase.name: phase for phase in phases}


def test_healthy_traffic_fires_nothing_but_the_watchdog(phases):
    healthy = phases["healthy"]
    assert healthy.seconds >= 240
    assert not healthy.alerts, table([healthy])


@pytest.mark.parametrize("fault", EXPECTED)
def test_each_fault_fires_its_own_alert_and_only_what_it_implies(phases, fault):
    phase = phases[fault]
    own, implied = EXPECTED[fault]
    times = phase.alerts.get(own)
    assert times is not None and times.webhook is not None and times.webhook <= FIRE_WITHIN, \
        table([phase])
    assert times.prometheus is not None and times.prometheus <= times.webhook
    assert set(phase.alerts) <= {own} | implied, table([phase])


@pytest.mark.parametrize("fault", ALSO_FIRES)
def test_a_fault_fires_the_other_alerts_it_must_imply(phases, fault):
    phase = phases[fault]
    for name in ALSO_FIRES[fault]:
        times = phase.alerts.get(name)
        assert times is not None and times.webhook is not None \
            and times.webhook <= ALSO_FIRE_WITHIN, table([phase])


@pytest.mark.parametrize("fault", EXPECTED)
def test_every_alert_a_fault_fired_resolves_after_recovery(phases, fault):
    phase = phases[fault]
    notified = {name: t for name, t in phase.alerts.items() if t.webhook is not None}
    assert notified, table([phase])
    for name, times in notified.items():
        assert times.resolved is not None and times.resolved <= RESOLVE_WITHIN, table([phase])


def test_the_matrix_reports_no_problem(phases):
    assert problems(list(phases.values())) == []
