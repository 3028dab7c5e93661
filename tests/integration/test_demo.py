"""The demo, run for real: its /metrics passes promtool, and each --fault makes its alert
condition true while a normal run keeps every condition false."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragmon.demo import Summary

ROOT = Path(__file__).resolve().parents[2]
QPS = 20  # enough queries in a few seconds for the rates to be far from their thresholds
DEFAULT_QPS = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def total(samples, name, **match):
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def conditions(before, after, elapsed):
    """The product-design and answer-quality alert expressions, evaluated on the scrape
    deltas."""
    def delta(name, **match):
        return total(after, name, **match) - total(before, name, **match)
    buckets = {}
    for (name, labels), value in after.items():
        if name == "rag_query_duration_seconds_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = value - before.get((name, labels), 0.0)
    queries = delta("rag_queries_total")
    lookups = delta("rag_cache_operations_total", cache_type="semantic")
    spend = delta("rag_spend_dollars_total")
    remaining = [v for (n, labels), v in after.items() if n == "rag_rate_limit_remaining_requests"]
    scores = {name: delta("rag_evaluation_score_sum", score=name)
              / max(delta("rag_evaluation_score_count", score=name), 1)
              for name in ("faithfulness", "answer_relevance", "context_recall")}
    feedback = delta("rag_feedback_total")
    aged = delta("rag_retrieval_newest_document_age_seconds_count")
    return {
        "scores": scores,
        "late_evaluations": delta("rag_late_evaluations_total"),
        "empty_retrieval_rate": delta("rag_empty_retrievals_total")
        / max(delta("rag_retrieval_queries_total"), 1),
        "feedback": feedback,
        "negative_feedback_rate": delta("rag_feedback_total", feedback="negative") / max(feedback, 1),
        # p10 of the newest document's age above 1 day <=> under 10% of queries at le=86400
        "share_with_a_document_from_the_last_day":
            delta("rag_retrieval_newest_document_age_seconds_bucket", le="86400.0") / max(aged, 1),
        "queries": queries,
        "p95": Summary.quantile(0.95, buckets),
        "error_rate": delta("rag_queries_total", status="error") / queries,
        "cache_hit_rate": delta("rag_cache_operations_total", cache_type="semantic", result="hit") / lookups,
        "pace_per_day": spend / elapsed * 86400,
        "pace_at_default_qps": spend / queries * DEFAULT_QPS * 86400,
        "min_remaining_requests": min(remaining),
    }


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    runs = {}
    try:
        for fault in (None, "latency", "errors", "cache", "cost", "ratelimit", "quality"):
            port = free_port()
            log_dir = tmp_path_factory.mktemp(f"demo-{fault or 'normal'}")
            cmd = [sys.executable, str(ROOT / "m2_3_monitoring.py"), "--port", str(port), "--qps", str(QPS),
                   "--log-dir", str(log_dir), "--summary-every", "2"]
            if fault:
                cmd += ["--fault", fault]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs[fault] = {"proc": proc, "port": port, "log_dir": log_dir}
        for run in runs.values():
            deadline = time.monotonic() + 20
            while True:
                try:
                    run["first"] = scrape(run["port"])
                    run["t0"] = time.monotonic()
                    break
                except OSError:
                    assert run["proc"].poll() is None, run["proc"].communicate()
                    assert time.monotonic() < deadline, "demo did not serve /metrics"
                    time.sleep(0.2)
        time.sleep(10)
        for run in runs.values():
            run["text"], after = scrape(run["port"])
            run["conditions"] = conditions(run["first"][1], after, time.monotonic() - run["t0"])
        for run in runs.values():
            run["proc"].send_signal(signal.SIGTERM)
        for run in runs.values():
            run["stdout"], run["stderr"] = run["proc"].communicate(timeout=20)
        yield runs
    finally:
        for run in runs.values():
            if run["proc"].poll() is None:
                run["proc"].kill()
                run["proc"].wait()


def test_promtool_check_metrics_prints_nothing_on_the_demo_output(demo_runs):
    result = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=demo_runs[None]["text"],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_normal_run_keeps_every_alert_condition_false(demo_runs):
    c = demo_runs[None]["conditions"]
    assert c["queries"] > 50
    assert c["p95"] < 2.0, c
    assert c["error_rate"] < 0.05, c
    assert c["cache_hit_rate"] >= 0.3, c
    assert c["pace_at_default_qps"] < 100, c
    assert c["min_remaining_requests"] >= 100, c
    assert min(c["scores"].values()) > 0.7 and c["late_evaluations"] > 0, c
    assert c["empty_retrieval_rate"] < 0.1 and c["feedback"] > 20, c
    assert c["negative_feedback_rate"] < 0.25, c
    assert c["share_with_a_document_from_the_last_day"] > 0.5, c


@pytest.mark.parametrize("fault, check", [
    ("latency", lambda c: c["p95"] > 2.0),
    ("errors", lambda c: c["error_rate"] > 0.05),
    ("cache", lambda c: c["cache_hit_rate"] < 0.3),
    ("cost", lambda c: c["pace_per_day"] > 100),
    ("ratelimit", lambda c: c["min_remaining_requests"] < 100),
    ("quality", lambda c: c["empty_retrieval_rate"] > 0.1 and c["negative_feedback_rate"] > 0.25
     and c["share_with_a_document_from_the_last_day"] < 0.1),
])
def test_each_fault_makes_its_alert_condition_true(demo_runs, fault, check):
    assert check(demo_runs[fault]["conditions"]), demo_runs[fault]["conditions"]


def test_the_quality_fault_drops_every_score_by_more_than_the_alerts_20_percent(demo_runs):
    normal, degraded = (demo_runs[f]["conditions"]["scores"] for f in (None, "quality"))
    for name, usual in normal.items():
        assert degraded[name] < 0.8 * usual, (name, usual, degraded[name])


def test_sigterm_stops_cleanly_after_printing_summaries(demo_runs):
    run = demo_runs[None]
    assert run["proc"].returncode == 0, run["stderr"]
    lines = [line for line in run["stdout"].splitlines() if "q/s" in line and "p95" in line]
    assert len(lines) >= 3, run["stdout"]
    assert "Traceback" not in run["stderr"]


def test_the_demo_writes_request_records_and_keeps_logs_off_the_console(demo_runs):
    run = demo_runs["errors"]
    [records] = list(Path(run["log_dir"]).glob("*_performance.jsonl"))
    assert len(records.read_text().splitlines()) > 50
    assert (Path(run["log_dir"]) / "app.jsonl").read_text().count('"event":"error"') > 0
    assert '"event"' not in run["stdout"] + run["stderr"]


@pytest.mark.parametrize("args, expected", [
    (["--fault", "meltdown"], "invalid choice: 'meltdown'"),
    (["--qps", "0"], "--qps 0.0 is out of range"),
    (["--duration", "-1"], "--duration -1.0 is negative"),
])
def test_bad_arguments_are_explained(args, expected):
    result = subprocess.run([sys.executable, str(ROOT / "m2_3_monitoring.py"), *args],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and expected in result.stderr


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(ROOT / "m2_3_monitoring.py"), "--port", str(port),
                                 "--duration", "1", "--log-dir", str(tmp_path)],
                                capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr


def test_a_bad_setting_stops_the_demo_with_its_message(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "m2_3_monitoring.py"), "--duration", "1"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=30,
                            env={**os.environ, "METRICS_PORT": "abc", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "configuration error: METRICS_PORT='abc' is not a whole number" in result.stderr
    assert "Traceback" not in result.stderr
