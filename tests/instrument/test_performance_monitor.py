"""PerformanceMonitor: start_request / add_stage / end_request, the context-manager form, bottlenecks, bad input,
requests never ended, thread safety, and one log shared with @monitored_query."""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.performance import (DuplicateRequestError, InvalidDurationError, PerformanceMonitor,
                                PerformanceMonitorError, RequestEndedError, UnknownRequestError,
                                find_bottlenecks)
from ragmon.instrument.records import LOG_FILE_GLOB, DailyFileSink
from tests.conftest import ListSink, make_settings

ROOT = Path(__file__).resolve().parents[2]


def read_log(log_dir: Path) -> list[dict]:
    records = []
    for path in sorted(log_dir.glob(LOG_FILE_GLOB)):
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        records += [json.loads(line) for line in raw.splitlines()]
    return records


def stage_count(metrics: RAGMetrics, stage: str, operation: str = "query") -> float | None:
    return metrics.registry.get_sample_value("rag_stage_duration_seconds_count",
                                             {"operation": operation, "stage": stage})


def stage_sum(metrics: RAGMetrics, stage: str, operation: str = "query") -> float | None:
    return metrics.registry.get_sample_value("rag_stage_duration_seconds_sum",
                                             {"operation": operation, "stage": stage})


@pytest.fixture
def monitor(tmp_path, metrics, settings):
    m = PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings)
    yield m
    m.close()


# --- start_request / add_stage / end_request -------------------------------------------------------------------------

def test_seed_calls_return_a_summary_and_write_one_record(monitor, tmp_path, metrics):
    assert monitor.start_request("user-123-query-456") == "user-123-query-456"
    monitor.log_stage("user-123-query-456", "retrieval", 1.5,
                      {"documents_retrieved": 50, "strategy": "comprehensive"})
    monitor.log_stage("user-123-query-456", "grading", 0.8, {"documents_kept": 20})
    monitor.log_stage("user-123-query-456", "generation", 2.1, {"model": "gpt-4", "tokens": 500})
    summary = monitor.end_request("user-123-query-456")

    # The durations were measured elsewhere and logged afterwards, so they set the total.
    assert summary["total_time"] == pytest.approx(4.4)
    assert summary["stages"]["retrieval"]["duration"] == 1.5
    assert summary["stages"]["generation"]["share"] == pytest.approx(2.1 / 4.4)
    assert sum(s["share"] for s in summary["stages"].values()) == pytest.approx(1.0)
    assert summary["status"] == "success" and summary["record_written"] is True
    assert summary["bottlenecks"] == []  # 48% < BOTTLENECK_SHARE 0.5, no budgets set
    assert monitor.get_summary("user-123-query-456") == summary

    [record] = read_log(tmp_path)
    assert record["request_id"] == "user-123-query-456"
    assert record["total_time"] == pytest.approx(4.4)
    assert record["stages"]["retrieval"] == {"duration": 1.5, "metadata": {
        "documents_retrieved": 50, "strategy": "comprehensive"}}
    assert record["stages"]["grading"]["metadata"] == {"documents_kept": 20}
    for key in ("start_time", "timestamp", "status", "error_type", "operation", "model", "tokens",
                "cost", "relevance_score", "context_precision", "attributes"):
        assert key in record
    # The end is now; back-filled stage time moves the start back, never the end forward.
    assert record["start_time"] + record["total_time"] == pytest.approx(time.time(), abs=5)
    assert record["start_time"] == pytest.approx(summary["start_time"])


def test_stages_feed_the_same_histogram_as_stage_blocks(monitor, metrics):
    for n in range(3):
        rid = monitor.start_request()
        monitor.log_stage(rid, "retrieval", 0.25)
        monitor.end_request(rid)
    assert stage_count(metrics, "retrieval") == 3
    assert stage_sum(metrics, "retrieval") == pytest.approx(0.75)


def test_wall_time_is_the_total_when_stages_are_measured_live(monitor):
    rid = monitor.start_request()
    with monitor.request() as req:  # nested use of another request does not interfere
        pass
    time.sleep(0.05)
    monitor.log_stage(rid, "retrieval", 0.01)
    summary = monitor.end_request(rid)
    assert summary["total_time"] >= 0.05
    assert summary["stages"]["retrieval"]["share"] < 0.5
    assert req.summary["ended"] is True


def test_explicit_total_time_and_record_fields(monitor, tmp_path, settings):
    rid = monitor.start_request("r-fields")
    monitor.log_stage(rid, "generation", 0.6)
    summary = monitor.end_request(
        rid, total_time=1.0, model="gpt-4o-mini", input_tokens=1100, output_tokens=200,
        cached_input_tokens=100, relevance_score=0.9, context_precision=0.7,
        time_to_first_token=0.3, cache_hits=1, cache_misses=2, operation="agent_query",
        attributes={"agent_type": "crewai", "complexity_score": 0.85,
                    "entities": ["customers", "bills"], "tool_calls": 3, "graphql_queries": 2})
    assert summary["total_time"] == 1.0 and summary["operation"] == "agent_query"
    [record] = read_log(tmp_path)
    assert record["operation"] == "agent_query" and record["model"] == "gpt-4o-mini"
    assert record["tokens"] == {"input": 1000, "output": 200, "cached_input": 100}
    # MODEL_PRICES_FILE is empty in tests: the default prices apply.
    expected = (1000 * settings.COST_PER_1K_INPUT_TOKENS + 200 * settings.COST_PER_1K_OUTPUT_TOKENS
                + 100 * settings.COST_PER_1K_CACHED_INPUT_TOKENS) / 1000
    assert record["cost"] == pytest.approx(expected)
    assert record["relevance_score"] == 0.9 and record["context_precision"] == 0.7
    assert record["time_to_first_token"] == 0.3
    assert record["cache"] == {"hits": 1, "misses": 2}
    assert record["attributes"]["entities"] == ["customers", "bills"]
    assert record["attributes"]["graphql_queries"] == 2


def test_a_stage_logged_twice_adds_up_and_merges_metadata(monitor, tmp_path, metrics):
    rid = monitor.start_request()
    monitor.log_stage(rid, "retrieval", 0.2, {"round": 1, "docs": 5})
    monitor.log_stage(rid, "retrieval", 0.3, {"round": 2})
    summary = monitor.end_request(rid)
    assert summary["stages"]["retrieval"]["duration"] == pytest.approx(0.5)
    assert summary["stages"]["retrieval"]["metadata"] == {"round": 2, "docs": 5}
    assert stage_count(metrics, "retrieval") == 2  # the histogram sees each run
    assert read_log(tmp_path)[0]["stages"]["retrieval"]["duration"] == pytest.approx(0.5)


def test_set_and_count_before_the_end(monitor, tmp_path):
    rid = monitor.start_request()
    monitor.set(rid, model="claude-3-5-haiku", input_tokens=10, attributes={"agent_type": "simple"})
    assert monitor.count(rid, "tool_calls") == 1
    assert monitor.count(rid, "tool_calls", 2) == 3
    monitor.end_request(rid, cost=0.5)
    [record] = read_log(tmp_path)
    assert record["model"] == "claude-3-5-haiku" and record["cost"] == 0.5
    assert record["attributes"] == {"agent_type": "simple", "tool_calls": 3}


# --- context manager ----------------------------------------------------------------------------

def test_context_manager_times_stages_and_sets_fields(monitor, tmp_path, metrics):
    with monitor.request("ctx-1", attributes={"agent_type": "crewai"}, model="gpt-4o") as req:
        with req.stage("retrieval", top_k=5) as stage:
            time.sleep(0.02)
            stage.metadata["documents"] = 7
        with req.stage("generation"):
            time.sleep(0.01)
        req.set(input_tokens=100, output_tokens=20)
        req.count("tool_calls")
        req.count("graphql_queries", 2)
        req.attributes["entities"] = ["plans"]
    summary = req.summary
    assert summary["request_id"] == "ctx-1" and summary["status"] == "success"
    assert summary["stages"]["retrieval"]["duration"] >= 0.02
    assert summary["stages"]["retrieval"]["metadata"] == {"top_k": 5, "documents": 7}
    assert stage.duration == summary["stages"]["retrieval"]["duration"]
    assert summary["total_time"] >= summary["stage_time"]
    [record] = read_log(tmp_path)
    assert record["model"] == "gpt-4o" and record["tokens"]["input"] == 100
    assert record["attributes"] == {"agent_type": "crewai", "tool_calls": 1,
                                    "graphql_queries": 2, "entities": ["plans"]}
    assert stage_count(metrics, "generation") == 1


def test_an_exception_in_the_block_ends_the_request_as_an_error(monitor, tmp_path):
    with pytest.raises(TimeoutError, match="upstream"):
        with monitor.request("ctx-err") as req:
            with req.stage("retrieval"):
                raise TimeoutError("upstream")
    [record] = read_log(tmp_path)
    assert record["status"] == "error" and record["error_type"] == "TimeoutError"
    assert record["stages"]["retrieval"]["metadata"] == {"error_type": "TimeoutError"}
    assert monitor.open_requests() == []


def test_keyboard_interrupt_counts_as_cancelled_and_fail_marks_an_error(monitor, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with monitor.request("ctx-cancel"):
            raise KeyboardInterrupt
    with monitor.request("ctx-fallback") as req:
        req.fail("RateLimitError")
    statuses = {r["request_id"]: (r["status"], r["error_type"]) for r in read_log(tmp_path)}
    assert statuses == {"ctx-cancel": ("cancelled", "KeyboardInterrupt"),
                        "ctx-fallback": ("error", "RateLimitError")}


def test_the_monitor_itself_is_a_context_manager(tmp_path, metrics, settings):
    with PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings) as monitor:
        with monitor.request():
            pass
    assert len(read_log(tmp_path)) == 1


# --- bottlenecks ----------------------------------------------------------------------------------

def test_bottleneck_by_share_and_by_budget_with_reasons(tmp_path, metrics):
    settings = make_settings(BOTTLENECK_SHARE="0.5", STAGE_BUDGETS="retrieval=1.0,reranking=0.05")
    with PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings) as monitor:
        rid = monitor.start_request()
        monitor.log_stage(rid, "retrieval", 1.2)   # 20% of 6 s, over its 1.0 s budget
        monitor.log_stage(rid, "reranking", 0.05)  # exactly at its budget: not over
        monitor.log_stage(rid, "generation", 4.75)  # 79%, no budget
        summary = monitor.end_request(rid)
    by_stage = {b["stage"]: b for b in summary["bottlenecks"]}
    assert set(by_stage) == {"retrieval", "generation"}
    assert by_stage["generation"]["reasons"] == ["share"]
    assert "79%" in by_stage["generation"]["reason"] and "BOTTLENECK_SHARE=0.5" in by_stage["generation"]["reason"]
    assert by_stage["retrieval"]["reasons"] == ["budget"]
    assert "budget of 1 s" in by_stage["retrieval"]["reason"]
    assert [b["stage"] for b in summary["bottlenecks"]] == ["generation", "retrieval"]  # slowest first


def test_a_stage_can_be_a_bottleneck_for_both_reasons_and_exactly_at_the_share_is_not():
    both = find_bottlenecks({"generation": 3.0, "retrieval": 1.0}, 4.0, 0.5, {"generation": 2.0})
    assert both[0]["stage"] == "generation" and both[0]["reasons"] == ["share", "budget"]
    assert find_bottlenecks({"a": 1.0, "b": 1.0}, 2.0, 0.5, {}) == []  # 50% is not "more than"
    assert find_bottlenecks({"a": 0.0}, 0.0, 0.5, {}) == []  # no division by zero


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["log_stage", "end_request", "get_summary", "set", "count"])
def test_an_unknown_request_id_is_a_clear_key_error(monitor, call):
    args = {"log_stage": ("nope", "retrieval", 0.1), "end_request": ("nope",),
            "get_summary": ("nope",), "set": ("nope",), "count": ("nope", "tool_calls")}[call]
    with pytest.raises(UnknownRequestError) as info:
        getattr(monitor, call)(*args)
    assert isinstance(info.value, KeyError) and isinstance(info.value, PerformanceMonitorError)
    message = str(info.value)
    assert "'nope'" in message and "start_request('nope')" in message


def test_a_stage_after_the_end_is_a_clear_error(monitor):
    rid = monitor.start_request("done")
    monitor.end_request(rid)
    with pytest.raises(RequestEndedError, match=r"'done' has already ended.*before end_request"):
        monitor.log_stage(rid, "generation", 0.1)
    with pytest.raises(RequestEndedError):
        monitor.end_request(rid)
    with pytest.raises(ValueError):  # RequestEndedError is a ValueError
        monitor.log_stage(rid, "generation", 0.1)


@pytest.mark.parametrize("duration, words", [
    (-0.5, "negative"), (float("nan"), "not finite"), (float("inf"), "not finite"),
    ("0.5", "not a duration"), (True, "not a duration"), (None, "not a duration")])
def test_bad_durations_are_refused_with_the_value_and_the_fix(monitor, duration, words):
    rid = monitor.start_request()
    with pytest.raises(InvalidDurationError) as info:
        monitor.log_stage(rid, "retrieval", duration)
    assert isinstance(info.value, ValueError)
    assert words in str(info.value) and "'retrieval'" in str(info.value)
    if duration == -0.5:
        assert "-0.5" in str(info.value) and "perf_counter" in str(info.value)
    assert monitor.get_summary(rid)["stages"] == {}  # nothing was recorded
    monitor.end_request(rid)


def test_other_bad_input(monitor):
    rid = monitor.start_request("dup")
    with pytest.raises(DuplicateRequestError, match="'dup' is already started"):
        monitor.start_request("dup")
    for bad_id in ("", 42):
        with pytest.raises(ValueError, match="request_id="):
            monitor.start_request(bad_id)
    with pytest.raises(ValueError, match="stage name=''"):
        monitor.log_stage(rid, "", 0.1)
    with pytest.raises(ValueError, match="metadata="):
        monitor.log_stage(rid, "retrieval", 0.1, ["not", "a", "dict"])
    with pytest.raises(ValueError, match="input_tokens=-1"):
        monitor.end_request(rid, input_tokens=-1)
    with pytest.raises(ValueError, match="relevance_score=1.5"):
        monitor.end_request(rid, relevance_score=1.5)
    with pytest.raises(ValueError, match="status='ok'"):
        monitor.end_request(rid, status="ok")
    with pytest.raises(TypeError, match="unknown record field.*'agent_type'.*attributes"):
        monitor.end_request(rid, agent_type="simple")
    with pytest.raises(ValueError, match="total_time"):
        monitor.end_request(rid, total_time=-1)
    # None of the refused calls ended the request.
    assert monitor.end_request(rid, error_type="TimeoutError")["status"] == "error"
    with pytest.raises(DuplicateRequestError, match="already ended"):
        monitor.start_request("dup")


def test_bad_constructor_arguments(tmp_path, settings):
    with pytest.raises(ValueError, match="operation=''"):
        PerformanceMonitor(log_dir=tmp_path, operation="", settings=settings)
    with pytest.raises(ValueError, match="log_dir or sink"):
        PerformanceMonitor(log_dir=tmp_path, sink=ListSink(), settings=settings)


# --- requests never ended ---------------------------------------------------------------------------

def test_open_requests_are_listed_and_summarised_provisionally(monitor):
    rid = monitor.start_request("slow-one")
    monitor.log_stage(rid, "retrieval", 0.2)
    [entry] = monitor.open_requests()
    assert entry["request_id"] == "slow-one" and entry["stages"] == ["retrieval"]
    assert entry["age"] >= 0
    summary = monitor.get_summary(rid)
    assert summary["ended"] is False and "still open" in summary["note"]
    assert summary["total_time"] >= 0.2


def test_close_writes_never_ended_requests_as_cancelled_and_warns(tmp_path, metrics, settings, caplog):
    monitor = PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings)
    monitor.start_request("forgotten")
    monitor.log_stage("forgotten", "retrieval", 0.1)
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        assert monitor.close() == ["forgotten"]
    assert "never ended: forgotten" in caplog.text
    assert monitor.close() == []  # idempotent
    [record] = read_log(tmp_path)
    assert record["status"] == "cancelled" and record["error_type"] == "RequestNotEnded"
    assert record["attributes"] == {"not_ended": True}
    assert record["stages"]["retrieval"]["duration"] == 0.1


def test_close_without_flushing_only_warns(tmp_path, metrics, settings, caplog):
    monitor = PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings)
    monitor.start_request("dropped")
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        assert monitor.close(flush_open=False) == ["dropped"]
    assert "they are not written" in caplog.text
    assert read_log(tmp_path) == []


def test_requests_open_at_interpreter_exit_are_written_and_reported(tmp_path):
    script = f"""
import logging, sys
sys.path.insert(0, {str(ROOT)!r})
logging.basicConfig()
from prometheus_client import CollectorRegistry
from ragmon.settings import load_settings
from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.performance import PerformanceMonitor
settings = load_settings({{"MODEL_PRICES_FILE": ""}}, dotenv_path="/dev/null")
monitor = PerformanceMonitor(log_dir={str(tmp_path)!r}, settings=settings,
                             metrics=RAGMetrics(registry=CollectorRegistry(), settings=settings))
monitor.start_request("left-open")
monitor.log_stage("left-open", "generation", 0.5)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "never ended: left-open" in proc.stderr
    [record] = read_log(tmp_path)
    assert record["request_id"] == "left-open" and record["error_type"] == "RequestNotEnded"


# --- destinations and failures ----------------------------------------------------------------------

def test_without_log_dir_the_settings_choose_the_destination(tmp_path, metrics):
    off = make_settings(REQUEST_LOG_DESTINATION="none")
    with PerformanceMonitor(metrics=metrics, settings=off) as monitor:
        assert monitor.sink is None
        with monitor.request() as req:
            pass
    assert req.summary["record_written"] is False

    to_file = make_settings(REQUEST_LOG_DESTINATION="file", LOG_DIR=str(tmp_path / "logs"))
    with PerformanceMonitor(metrics=metrics, settings=to_file) as monitor:
        with monitor.request():
            pass
    assert len(read_log(tmp_path / "logs")) == 1


def test_a_failing_sink_is_counted_and_does_not_break_the_caller(metrics, settings):
    class FullDisk:
        def write(self, record, at=None):
            raise OSError(28, "No space left on device")

    with PerformanceMonitor(sink=FullDisk(), metrics=metrics, settings=settings) as monitor:
        rid = monitor.start_request()
        summary = monitor.end_request(rid)
    assert summary["record_written"] is False
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total",
                                             {"reason": "record_write"}) == 1


def test_both_paths_write_one_log_in_one_format(tmp_path, metrics, settings):
    from m2_3_report import load_records
    from ragmon import monitored_query, stage

    sink = DailyFileSink(tmp_path)

    @monitored_query(operation="rag_search", model="gpt-4o-mini", metrics=metrics, request_log=sink)
    def answer():
        with stage("retrieval", metrics=metrics):
            pass
        return {"input_tokens": 10, "output_tokens": 5}

    answer()
    with PerformanceMonitor(sink=sink, metrics=metrics, settings=settings,
                            operation="rag_search") as monitor:
        with monitor.request(model="gpt-4o-mini", input_tokens=10, output_tokens=5) as req:
            req.log_stage("retrieval", 0.01)
    sink.close()
    decorator_record, monitor_record = read_log(tmp_path)
    assert set(decorator_record) == set(monitor_record)
    assert set(decorator_record["stages"]["retrieval"]) == set(monitor_record["stages"]["retrieval"])
    df = load_records(tmp_path, settings=settings)
    assert len(df) == 2 and df["stage_retrieval"].notna().all()
    assert df.attrs["read_stats"]["skipped_lines"] == 0
    assert stage_count(metrics, "retrieval", "rag_search") == 2
    assert decorator_record["operation"] == monitor_record["operation"] == "rag_search"


# --- threads ------------------------------------------------------------------------------------

def test_many_threads_share_one_monitor(tmp_path, settings):
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)
    errors = []
    with PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings) as monitor:
        def work(t):
            try:
                for n in range(150):
                    rid = monitor.start_request(f"t{t}-{n}")
                    monitor.log_stage(rid, "retrieval", 0.001, {"n": n})
                    monitor.count(rid, "tool_calls")
                    monitor.log_stage(rid, "generation", 0.002)
                    monitor.end_request(rid)
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert monitor.open_requests() == []
    assert errors == []
    records = read_log(tmp_path)
    assert len(records) == 1200
    assert len({r["request_id"] for r in records}) == 1200
    assert all(r["attributes"] == {"tool_calls": 1} for r in records)
    assert stage_count(metrics, "retrieval") == 1200
    assert stage_sum(metrics, "generation") == pytest.approx(2.4)
    assert not math.isnan(records[0]["total_time"])



def test_with_no_arguments_records_go_to_the_process_wide_request_log(metrics):
    from ragmon.instrument import runtime as instrument

    previous = instrument.STATE.request_log
    shared = ListSink()
    shared.close = lambda: pytest.fail("the monitor closed a sink it does not own")
    try:
        instrument.configure_request_log(sink=shared)
        with PerformanceMonitor(metrics=metrics) as monitor:
            with monitor.request("shared-1"):
                pass
    finally:
        instrument.STATE.request_log = previous
    assert [r["request_id"] for r in shared.records] == ["shared-1"]


def test_lone_surrogates_in_names_are_replaced_and_counted_so_the_report_reads_every_record(tmp_path, metrics, settings):
    from ragmon.report.reader import line_problem
    monitor = PerformanceMonitor(log_dir=tmp_path, metrics=metrics, settings=settings, operation="op\udc80")
    for n in range(20):
        rid = monitor.start_request()
        monitor.log_stage(rid, "retrieval\ud800", 0.01)
        monitor.end_request(rid, model="gpt\udc80", input_tokens=10, **({"operation": "other\udfff"} if n % 2 else {}))
    monitor.close()
    lines = [line for path in tmp_path.glob(LOG_FILE_GLOB) for line in path.read_bytes().splitlines(keepends=True)]
    assert len(lines) == 20
    for line in lines:
        assert b"\\ud" not in line.lower()  # no escaped surrogate either
        problem, record = line_problem(line)
        assert problem is None
        assert record["model"] == "gpt\ufffd" and record["operation"] in ("op\ufffd", "other\ufffd")
        assert list(record["stages"]) == ["retrieval\ufffd"]
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "unsafe_name"}) == 60
