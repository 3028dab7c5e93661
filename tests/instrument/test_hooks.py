"""Per-query hooks: a feature joins the query path in one place, and costs nothing unused."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragmon import monitored_query
from ragmon.instrument import hooks


@pytest.fixture
def registered():
    added = []

    def add(start=None, finish=None):
        if start is not None:
            hooks.on_start(start)
            added.append(start)
        if finish is not None:
            hooks.on_finish(finish)
            added.append(finish)

    yield add
    for fn in added:
        hooks.remove(fn)
    assert not set(added) & {*hooks.HOOKS.start, *hooks.HOOKS.finish}


def test_no_hook_is_registered_by_importing_and_querying():
    """A fresh interpreter: features register their hooks when first used, never at import."""
    probe = ("import ragmon, m2_3_monitoring\n"
             "from ragmon.instrument.hooks import HOOKS\n"
             "@ragmon.monitored_query('op', request_log=False)\n"
             "def answer():\n"
             "    return {'input_tokens': 3, 'output_tokens': 1}\n"
             "answer()\n"
             "print(len(HOOKS.start), len(HOOKS.finish))\n")
    root = Path(__file__).resolve().parents[2]
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["0", "0"]


def test_a_finish_hook_sees_the_outcome_and_adds_its_record_fields(metrics, sink, registered):
    seen = []

    def start(ctx):
        ctx.extras().attributes = {"started": ctx.operation}

    def finish(ctx, done):
        seen.append((done.status, done.model, done.settlement.cost > 0, done.duration >= 0))
        done.record["feature"] = {"n": 1}

    registered(start, finish)
    registered(start, finish)  # registering twice runs each once

    @monitored_query(operation="op", model="gpt-4o-mini", metrics=metrics, request_log=sink)
    def answer():
        return {"input_tokens": 10, "output_tokens": 5}

    answer()
    assert seen == [("success", "gpt-4o-mini", True, True)]
    [record] = sink.records
    assert record["feature"] == {"n": 1} and record["attributes"] == {"started": "op"}


def test_a_failing_hook_is_counted_and_the_query_and_its_record_go_on(metrics, sink, registered):
    def finish(ctx, done):
        raise RuntimeError("feature bug")

    registered(finish=finish)

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        return "ok"

    assert answer() == "ok"
    assert len(sink.records) == 1
    assert metrics.registry.get_sample_value(
        "rag_instrumentation_errors_total", {"reason": "hook"}) == 1


def test_a_finish_hook_of_a_query_without_record_gets_none(metrics, registered):
    records = []
    registered(finish=lambda ctx, done: records.append(done.record))

    @monitored_query(operation="op", metrics=metrics, request_log=False)
    def answer():
        return "ok"

    answer()
    assert records == [None]
