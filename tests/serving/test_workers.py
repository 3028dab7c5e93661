"""The multi-worker recipe's parts, in real forked processes: request ids after fork, dead
workers' files merged (totals kept, in-flight dropped, files not piling up), gauge modes, the
directory emptied at start, hooks that never raise."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ragmon.instrument import context
from ragmon.serving import workers

ROOT = Path(__file__).resolve().parents[2]


def _ids_in_child(queue) -> None:
    queue.put([context.new_request_id() for _ in range(200)])


def test_request_ids_stay_unique_in_forked_workers():
    parent = [context.new_request_id() for _ in range(5)]  # the counter has moved, as in --preload
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    children = [fork.Process(target=_ids_in_child, args=(queue,)) for _ in range(4)]
    for child in children:
        child.start()
    ids = parent + [i for _ in children for i in queue.get(timeout=30)]
    for child in children:
        child.join(30)
    assert len(ids) == len(set(ids)) == 805
    assert len({i.split("-")[0] for i in ids}) == 5  # one prefix per process


# Runs with PROMETHEUS_MULTIPROC_DIR set before anything imports prometheus_client.
SCRIPT = textwrap.dedent('''
    import json, multiprocessing, os, sys
    from pathlib import Path
    import ragmon
    from ragmon.serving import workers

    m = ragmon.metrics
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    fork = multiprocessing.get_context("fork")

    def work(index):
        m.queries.labels("op", "success").inc(3)
        m.in_flight.labels("op").inc(2)          # still "in flight" when the worker dies
        m.query_latency.labels("op").observe(0.3)
        m.rate_limit_requests.labels("openai").set(100 - index)
        m.service_info.labels("svc", "production").set(1)
        os._exit(0)

    def run_workers(first):
        pids = []
        for index in range(first, first + 5):
            p = fork.Process(target=work, args=(index,))
            p.start(); p.join(); pids.append(p.pid)
        return pids

    def scrape():
        registry = workers.multiprocess_registry()
        get = lambda name, **labels: registry.get_sample_value(name, labels)
        return {"queries": get("rag_queries_total", operation="op", status="success"),
                "in_flight": get("rag_queries_in_flight", operation="op"),
                "latency_count": get("rag_query_duration_seconds_count", operation="op"),
                "rate_limit": get("rag_rate_limit_remaining_requests", provider="openai"),
                "info": get("rag_service_info", service="svc", env="production"),
                "files": sorted(p.name for p in path.glob("*.db"))}

    out = {"in_mode": workers.in_multiprocess_mode()}
    pids = run_workers(0)
    dead_files = sorted(p.name for p in path.glob("*.db"))
    collector = workers.MultiProcessCollector(None, path=str(path))
    raw = {s.name: s.value for f in collector.collect() for s in f.samples
           if s.name == "rag_queries_in_flight"}
    out["in_flight_unretired"] = raw.get("rag_queries_in_flight")
    out["merged"] = workers.retire_workers(pids)
    out["after_hook"] = scrape()
    run_workers(5)                                  # no hook: the scrape retires them
    out["after_scrape"] = scrape()
    out["dead_files"] = dead_files
    (path / "counter_99999999.db").write_bytes(b"")  # an earlier run's leftover
    workers.prepare_multiprocess_dir()
    out["after_prepare"] = sorted(p.name for p in path.glob("*.db"))
    out["own_pid"] = os.getpid()
    print(json.dumps(out))
''')


def test_dead_workers_files_are_merged_totals_kept_and_in_flight_dropped(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
           "REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["in_mode"] is True
    # Without retiring, a dead worker's in-flight would be summed for good.
    assert out["in_flight_unretired"] == 10
    assert len(out["dead_files"]) > 5 * 4 and out["merged"] == 5 * 4
    hook = out["after_hook"]
    assert hook["queries"] == 15 and hook["latency_count"] == 5 and hook["in_flight"] in (0, None)
    assert hook["rate_limit"] == 96  # mostrecent: the last worker's value
    assert hook["info"] == 1  # constant, whichever workers lived
    own = f"_{out['own_pid']}.db"
    assert [f for f in hook["files"] if not f.endswith(own)] == [
        "counter_archive.db", "gauge_max_archive.db", "gauge_mostrecent_archive.db",
        "histogram_archive.db"]
    scrape = out["after_scrape"]
    assert scrape["queries"] == 30 and scrape["latency_count"] == 10 and scrape["rate_limit"] == 91
    assert scrape["in_flight"] in (0, None)
    assert [f for f in scrape["files"] if not f.endswith(own)] == [
        f for f in hook["files"] if not f.endswith(own)]  # ten dead workers, four files
    assert all(f.endswith(own) for f in out["after_prepare"])  # emptied, its own files kept


def test_a_directory_set_after_import_is_reported_not_trusted(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    workers._warned.discard("late_env")
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        assert workers.in_multiprocess_mode() is False
    assert "was set after prometheus_client was imported" in caplog.text


def test_hooks_log_and_carry_on_when_the_directory_is_unusable(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(blocker / "metrics"))

    class Worker:
        pid = 4242

    with caplog.at_level(logging.ERROR, logger="ragmon"):
        workers.on_starting(None)
        workers.post_fork(None, Worker())
        workers.child_exit(None, Worker())
    assert "could not prepare PROMETHEUS_MULTIPROC_DIR" in caplog.text
