"""Answer quality: named scores, late evaluations by request id, user feedback."""
import json
import time

import pytest

import m2_3_monitoring
from ragmon import (FeedbackResult, RAGMetrics, monitored_query, record_feedback, record_quality,
                    record_scores)
from ragmon.instrument import hooks
from ragmon.instrument.quality import finish_query
from ragmon.instrument.records import DailyFileSink
from tests.conftest import make_settings


@pytest.fixture(autouse=True)
def quality_hook_removed():
    """The quality hook registers on first use, for the process: each test leaves none behind
    (tests/instrument/test_hooks.py checks that no hook is registered before a feature is used)."""
    yield
    hooks.remove(finish_query)


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def refused(metrics, reason):
    return value(metrics, "rag_evaluation_scores_refused_total", reason=reason) or 0


def test_the_quality_api_is_exported_from_the_course_module():
    for name in ("record_scores", "record_feedback", "record_retrieval", "FeedbackResult"):
        assert getattr(m2_3_monitoring, name) is not None and name in m2_3_monitoring.__all__


def test_named_scores_inside_a_query_reach_the_record_and_the_histogram(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        assert record_scores({"faithfulness": 0.9}, answer_relevancy=0.7) is True
        assert record_scores(faithfulness=0.8) is True  # the last value of a name wins
        return "ok"

    assert answer() == "ok"
    record = sink.records[0]
    assert record["scores"] == {"faithfulness": 0.8, "answer_relevancy": 0.7}
    assert value(metrics, "rag_evaluation_score_sum", operation="op", score="faithfulness") == \
        pytest.approx(0.8)
    assert value(metrics, "rag_evaluation_score_count", operation="op",
                 score="answer_relevancy") == 1


def test_the_two_built_in_scores_are_named_scores_and_keep_their_own_fields(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def by_hand():
        record_quality(relevance_score=0.4)
        record_scores(context_precision=0.6)

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def returned():
        return {"relevance_score": 0.9}

    by_hand()
    returned()
    assert sink.records[0]["relevance_score"] == 0.4
    assert sink.records[0]["context_precision"] == 0.6
    assert "scores" not in sink.records[0]
    assert value(metrics, "rag_relevance_score_count", operation="op") == 2
    assert value(metrics, "rag_context_precision_count", operation="op") == 1
    assert value(metrics, "rag_evaluation_score_sum", operation="op",
                 score="relevance_score") == pytest.approx(1.3)
    assert value(metrics, "rag_evaluation_score_count", operation="op",
                 score="context_precision") == 1


def test_a_query_without_scores_writes_no_quality_fields(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def plain():
        return "ok"

    plain()
    assert "scores" not in sink.records[0] and "retrieval" not in sink.records[0]
    assert value(metrics, "rag_evaluation_score_count", operation="op",
                 score="relevance_score") is None


@pytest.mark.parametrize("scores, reason", [
    ({"faithfulness": 1.5}, "bad_value"),
    ({"faithfulness": float("nan")}, "bad_value"),
    ({"faithfulness": "0.9"}, "bad_value"),
    ({"faithfulness": True}, "bad_value"),
    ({"user 42 said": 0.5}, "bad_name"),
    ({"x" * 65: 0.5}, "bad_name"),
    ({3: 0.5}, "bad_name"),
])
def test_bad_scores_are_refused_and_counted_never_raised(metrics, sink, scores, reason):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        return record_scores(scores)

    assert answer() is False
    assert refused(metrics, reason) == 1
    assert "scores" not in sink.records[0]


def test_a_name_past_the_budget_is_refused_and_counted(registry, sink):
    metrics = RAGMetrics(registry=registry, settings=make_settings(MAX_SCORE_NAMES=4))

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer(n):
        record_scores({f"judge_{n}": 0.5})

    for n in range(5):
        answer(n)
    # relevance_score and context_precision hold two of the four places
    assert [r.get("scores") for r in sink.records] == [
        {"judge_0": 0.5}, {"judge_1": 0.5}, None, None, None]
    assert refused(metrics, "too_many_names") == 3


def test_scores_outside_a_query_without_a_request_id_are_refused(metrics):
    assert record_scores(faithfulness=0.5, metrics=metrics) is False
    assert refused(metrics, "no_active_query") == 1


def test_a_late_score_is_observed_now_counted_and_written_as_its_own_record(metrics, sink):
    assert record_scores({"faithfulness": 0.3}, request_id="req-1", operation="op",
                         metrics=metrics, request_log=sink) is True
    assert value(metrics, "rag_late_evaluations_total", operation="op") == 1
    assert value(metrics, "rag_evaluation_score_sum", operation="op",
                 score="faithfulness") == pytest.approx(0.3)
    (record,) = sink.records
    assert record["kind"] == "evaluation" and record["request_id"] == "req-1"
    assert record["scores"] == {"faithfulness": 0.3} and record["operation"] == "op"


def test_feedback_is_counted_by_class_and_written(metrics, sink):
    result = record_feedback("req-1", thumbs="down", reason="Outdated answer", operation="op",
                             metrics=metrics, request_log=sink)
    assert isinstance(result, FeedbackResult) and result and result.feedback == "negative"
    assert record_feedback("req-2", rating=5, operation="op", metrics=metrics, request_log=sink)
    assert record_feedback("req-3", rating=3, operation="op", metrics=metrics, request_log=sink)
    assert value(metrics, "rag_feedback_total", operation="op", feedback="negative") == 1
    assert value(metrics, "rag_feedback_total", operation="op", feedback="positive") == 1
    assert value(metrics, "rag_feedback_total", operation="op", feedback="neutral") == 1
    assert value(metrics, "rag_feedback_reasons_total", reason="outdated_answer") == 1
    first = sink.records[0]
    assert first["kind"] == "feedback" and first["request_id"] == "req-1"
    assert first["thumbs"] == "down" and first["reason"] == "outdated_answer"


@pytest.mark.parametrize("request_id, kwargs, reason", [
    ("", {"thumbs": "up"}, "malformed_request_id"),
    ("a b", {"thumbs": "up"}, "malformed_request_id"),
    ("x" * 129, {"thumbs": "up"}, "malformed_request_id"),
    (None, {"thumbs": "up"}, "malformed_request_id"),
    ("req", {}, "bad_value"),
    ("req", {"thumbs": "sideways"}, "bad_value"),
    ("req", {"rating": 6}, "bad_value"),
    ("req", {"rating": 4.5}, "bad_value"),
])
def test_bad_feedback_gets_a_clear_answer_and_is_counted(metrics, sink, request_id, kwargs,
                                                          reason):
    result = record_feedback(request_id, metrics=metrics, request_log=sink, **kwargs)
    assert not result and result.reason == reason and result.message
    assert value(metrics, "rag_feedback_rejected_total", reason=reason) == 1
    assert sink.records == []


def test_feedback_reasons_past_the_budget_are_counted_as_other(registry, sink):
    metrics = RAGMetrics(registry=registry, settings=make_settings(MAX_FEEDBACK_REASONS=2))
    for reason in ("wrong", "slow", "rude", "the answer was wrong!"):
        assert record_feedback("req", thumbs=False, reason=reason, metrics=metrics,
                               request_log=sink)
    assert value(metrics, "rag_feedback_reasons_total", reason="wrong") == 1
    assert value(metrics, "rag_feedback_reasons_total", reason="other") == 2
    assert [r["reason"] for r in sink.records] == ["wrong", "slow", "other", "other"]


# --- requests known to this server -------------------------------------------------------------

@pytest.fixture
def file_sink(tmp_path):
    sink = DailyFileSink(tmp_path / "logs")
    yield sink
    sink.close()


def test_feedback_for_a_request_another_worker_wrote_is_verified_and_takes_its_operation(
        metrics, file_sink, tmp_path):
    other_worker = DailyFileSink(tmp_path / "logs")  # same LOG_DIR, its own descriptors

    @monitored_query(operation="rag_search", metrics=metrics, request_log=other_worker)
    def answer():
        return m2_3_monitoring.current_request_id()

    rid = answer()
    other_worker.close()
    result = record_feedback(rid, thumbs="up", metrics=metrics, request_log=file_sink)
    assert result and result.verified and result.operation == "rag_search"
    assert value(metrics, "rag_feedback_total", operation="rag_search", feedback="positive") == 1


def test_feedback_for_an_unknown_request_is_refused_unless_told_not_to_verify(metrics, file_sink):
    result = record_feedback("never-served", thumbs="up", metrics=metrics, request_log=file_sink)
    assert not result and result.reason == "unknown_request"
    assert "not found" in result.message and "verify=False" in result.message
    assert value(metrics, "rag_feedback_rejected_total", reason="unknown_request") == 1
    accepted = record_feedback("never-served", thumbs="up", metrics=metrics,
                               request_log=file_sink, verify=False)
    assert accepted and not accepted.verified
    lines = [json.loads(line) for path in file_sink.log_dir.iterdir()
             for line in path.read_text().splitlines()]
    assert [(r["kind"], r["verified"]) for r in lines] == [("feedback", False)]


def test_feedback_for_a_request_past_the_age_limit_is_refused_as_too_old(registry, file_sink):
    metrics = RAGMetrics(registry=registry, settings=make_settings(FEEDBACK_MAX_AGE_HOURS=1))
    ended = time.time() - 2 * 3600
    file_sink.write({"request_id": "old-1", "start_time": ended - 1, "total_time": 1.0,
                     "operation": "op"}, at=ended)
    result = record_feedback("old-1", rating=1, metrics=metrics, request_log=file_sink)
    assert not result and result.reason == "too_old" and "FEEDBACK_MAX_AGE_HOURS" in result.message
    assert record_scores(faithfulness=0.1, request_id="old-1", metrics=metrics,
                         request_log=file_sink) is False
    assert refused(metrics, "too_old") == 1


def test_a_late_score_for_an_unknown_request_is_refused_and_counted(metrics, file_sink):
    assert record_scores(faithfulness=0.1, request_id="nope", metrics=metrics,
                         request_log=file_sink) is False
    assert refused(metrics, "unknown_request") == 1


def test_without_a_file_log_nothing_can_be_checked_and_feedback_is_unverified(metrics, sink):
    result = record_feedback("anything", thumbs="up", metrics=metrics, request_log=sink)
    assert result and not result.verified


def test_promtool_check_metrics_prints_nothing_for_the_quality_metrics(metrics, sink):
    import subprocess

    from prometheus_client import generate_latest

    from ragmon import record_retrieval
    from tests.conftest import require_binaries

    (promtool,) = require_binaries("promtool")

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        record_scores(faithfulness=0.9)
        record_retrieval([{"score": 0.8, "timestamp": time.time() - 600}])
        return {"relevance_score": 0.7, "context_precision": 0.6}

    answer()
    record_scores(faithfulness=0.5, request_id="r1", operation="op", metrics=metrics,
                  request_log=sink)
    record_scores(faithfulness=2.0, request_id="r1", metrics=metrics, request_log=sink)
    record_feedback("r1", thumbs="up", reason="clear", operation="op", metrics=metrics,
                    request_log=sink)
    record_feedback("", thumbs="up", metrics=metrics, request_log=sink)
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(metrics.registry),
                            capture_output=True)
    assert result.stdout == b"" and result.stderr == b"", (result.stdout, result.stderr)
    exposed = metrics.exposed_series_names()
    for name in ("rag_evaluation_score_bucket", "rag_evaluation_scores_refused_total",
                 "rag_late_evaluations_total", "rag_feedback_total", "rag_feedback_reasons_total",
                 "rag_feedback_rejected_total", "rag_retrieved_documents_bucket",
                 "rag_empty_retrievals_total", "rag_retrieval_queries_total",
                 "rag_retrieval_top_score_bucket",
                 "rag_retrieval_newest_document_age_seconds_bucket"):
        assert name in exposed, name


class Hostile(dict):
    def items(self):
        raise RuntimeError("boom")


class BrokenSink:
    def write(self, record, at=None):
        raise OSError(28, "No space left on device")


def errors(metrics, reason):
    return value(metrics, "rag_instrumentation_errors_total", reason=reason) or 0


def test_monitoring_failures_never_reach_the_host(metrics, sink):
    from ragmon import record_retrieval

    def documents():
        yield {"score": 0.5}
        raise RuntimeError("the retriever's iterator broke")

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        assert record_scores(Hostile(a=0.5)) is False
        record_retrieval(documents())
        return "the answer"

    assert answer() == "the answer"
    assert errors(metrics, "recording") == 2
    assert sink.records[0]["status"] == "success"
    # a record that cannot be written: the feedback and the score still count
    broken = BrokenSink()
    assert record_feedback("req-1", thumbs="up", operation="op", metrics=metrics,
                           request_log=broken)
    assert record_scores(faithfulness=0.5, request_id="req-1", operation="op", metrics=metrics,
                         request_log=broken)
    assert errors(metrics, "record_write") == 2
    assert value(metrics, "rag_feedback_total", operation="op", feedback="positive") == 1


def test_the_request_index_is_bounded_and_never_calls_a_dropped_id_unknown(metrics, file_sink,
                                                                           monkeypatch):
    from ragmon.instrument import known_requests
    monkeypatch.setattr(known_requests, "INDEX_LIMIT", 5)
    monkeypatch.setattr(known_requests, "_indexes", {})
    now = time.time()
    for n in range(8):
        file_sink.write({"request_id": f"r{n}", "start_time": now - 100 + n, "total_time": 0.5,
                         "operation": "op"}, at=now)
    assert record_feedback("r7", thumbs="up", metrics=metrics, request_log=file_sink).verified
    index = known_requests.index_for(file_sink.log_dir)
    assert len(index.entries) == 5 and "r0" not in index.entries
    dropped = record_feedback("r0", thumbs="up", metrics=metrics, request_log=file_sink)
    assert dropped and not dropped.verified  # it may have been served: not refused


def test_a_record_still_being_written_is_read_once_it_is_whole(metrics, file_sink):
    from ragmon.instrument.records import log_file_name
    now = time.time()
    file_sink.write({"request_id": "first", "start_time": now - 1, "total_time": 0.5,
                     "operation": "op"}, at=now)
    path = file_sink.log_dir / log_file_name(now)
    line = json.dumps({"request_id": "second", "start_time": now - 1, "total_time": 0.5,
                       "operation": "op"})
    with open(path, "a") as f:
        f.write(line[:20])  # a writer's line, cut mid-way for now
    assert not record_feedback("second", thumbs="up", metrics=metrics, request_log=file_sink)
    with open(path, "a") as f:
        f.write(line[20:] + "\n")
    assert record_feedback("second", thumbs="up", metrics=metrics, request_log=file_sink).verified


def test_streaming_and_async_queries_carry_their_scores(metrics, sink):
    import asyncio

    @monitored_query(operation="stream", metrics=metrics, request_log=sink)
    def stream():
        yield "a"
        record_scores(faithfulness=0.25)
        yield "b"

    @monitored_query(operation="async", metrics=metrics, request_log=sink)
    async def answer():
        await asyncio.sleep(0)
        record_scores(faithfulness=0.75)
        return "ok"

    assert list(stream()) == ["a", "b"]
    assert asyncio.run(answer()) == "ok"
    assert [r["scores"] for r in sink.records] == [{"faithfulness": 0.25}, {"faithfulness": 0.75}]
    assert value(metrics, "rag_evaluation_score_sum", operation="stream",
                 score="faithfulness") == 0.25


def test_an_id_of_a_day_already_compacted_is_taken_unverified(metrics, file_sink):
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * 86400))
    (file_sink.log_dir / "history" / f"day={day}").mkdir(parents=True)
    result = record_feedback("from-two-days-ago", thumbs="down", metrics=metrics,
                             request_log=file_sink)
    assert result and not result.verified


def _serve_one(log_dir, ids):
    """A worker process: answers one query into the shared LOG_DIR and reports its id."""
    from prometheus_client import CollectorRegistry as Registry
    metrics = RAGMetrics(registry=Registry(), settings=make_settings())
    sink = DailyFileSink(log_dir)

    @monitored_query(operation="worker_op", metrics=metrics, request_log=sink)
    def answer():
        return m2_3_monitoring.current_request_id()

    ids.put(answer())
    sink.close()


def test_feedback_for_a_request_another_worker_process_served_is_verified(metrics, file_sink):
    import multiprocessing
    context = multiprocessing.get_context("fork")
    ids = context.Queue()
    worker = context.Process(target=_serve_one, args=(str(file_sink.log_dir), ids))
    worker.start()
    try:
        rid = ids.get(timeout=60)
    finally:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert worker.exitcode == 0
    result = record_feedback(rid, rating=1, metrics=metrics, request_log=file_sink)
    assert result.verified and result.operation == "worker_op" and result.feedback == "negative"
