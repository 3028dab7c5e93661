"""100,000 distinct score names or feedback reasons: at most the configured bound of series, and
a few MB of memory at most (measured with tracemalloc)."""
import gc

import pytest
import tracemalloc

from prometheus_client import CollectorRegistry

from ragmon import RAGMetrics, monitored_query, record_feedback, record_scores
from ragmon.instrument import hooks
from ragmon.instrument.quality import finish_query
from tests.conftest import make_settings

DISTINCT = 100_000
MEMORY_LIMIT = 4 << 20  # "a few MB"


@pytest.fixture(autouse=True)
def quality_hook_removed():
    """The quality hook registers on first use, for the process: each test leaves none behind
    (tests/instrument/test_hooks.py checks that no hook is registered before a feature is used)."""
    yield
    hooks.remove(finish_query)


def label_values(metrics, family: str, label: str) -> set[str]:
    return {sample.labels[label] for metric in metrics.registry.collect() if metric.name == family
            for sample in metric.samples if label in sample.labels}


def grown_bytes(run) -> int:
    """What `run` left allocated (tracemalloc: Python objects still alive after it)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_a_hundred_thousand_score_names_leave_the_bound_of_series_and_little_memory():
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings(MAX_SCORE_NAMES=20))

    @monitored_query(operation="op", metrics=metrics, request_log=False)
    def answer(n):
        record_scores({f"judge_user_{n}": 0.5})

    def run():
        for n in range(DISTINCT):
            answer(n)

    grown = grown_bytes(run)
    names = label_values(metrics, "rag_evaluation_score", "score")
    assert len(names) == 18  # 20, of which relevance_score and context_precision are reserved
    assert metrics.registry.get_sample_value("rag_evaluation_scores_refused_total",
                                             {"reason": "too_many_names"}) == DISTINCT - 18
    assert grown < MEMORY_LIMIT, f"{grown:,} bytes left after {DISTINCT:,} names"


def test_a_hundred_thousand_feedback_reasons_leave_the_bound_of_series_and_little_memory():
    metrics = RAGMetrics(registry=CollectorRegistry(),
                         settings=make_settings(MAX_FEEDBACK_REASONS=20))

    def run():
        for n in range(DISTINCT):
            assert record_feedback(f"req-{n}", thumbs="up", reason=f"reason_{n}", operation="op",
                                   metrics=metrics, request_log=False)

    grown = grown_bytes(run)
    reasons = label_values(metrics, "rag_feedback_reasons", "reason")
    assert len(reasons) == 21 and "other" in reasons
    assert metrics.registry.get_sample_value("rag_feedback_reasons_total",
                                             {"reason": "other"}) == DISTINCT - 20
    assert metrics.registry.get_sample_value("rag_feedback_total",
                                             {"operation": "op", "feedback": "positive"}) == DISTINCT
    assert grown < MEMORY_LIMIT, f"{grown:,} bytes left after {DISTINCT:,} reasons"
