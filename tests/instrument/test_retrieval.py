"""Retrieval health: documents retrieved, empty retrievals, top score, newest document age."""
import time
from datetime import datetime, timedelta, timezone

import pytest
from langchain_core.documents import Document

from ragmon import monitored_query, record_retrieval
from ragmon.instrument import hooks
from ragmon.instrument.quality import finish_query


@pytest.fixture(autouse=True)
def quality_hook_removed():
    """The quality hook registers on first use, for the process: each test leaves none behind
    (tests/instrument/test_hooks.py checks that no hook is registered before a feature is used)."""
    yield
    hooks.remove(finish_query)


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def retrieve(metrics, sink, *args, **kwargs):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        record_retrieval(*args, **kwargs)
        return "ok"

    assert answer() == "ok"
    return sink.records[-1]["retrieval"]


def test_langchain_documents_with_scores_and_timestamps(metrics, sink):
    now = time.time()
    docs = [Document(page_content="a", metadata={"score": 0.42, "timestamp": now - 7200}),
            Document(page_content="b", metadata={"score": 0.81, "updated_at":
                                                  datetime.fromtimestamp(now - 600, timezone.utc)})]
    field = retrieve(metrics, sink, docs)
    assert field["documents"] == 2 and field["top_score"] == pytest.approx(0.81)
    assert 600 <= field["newest_document_age_seconds"] < 700
    assert value(metrics, "rag_retrieval_top_score_sum", operation="op") == pytest.approx(0.81)
    assert value(metrics, "rag_retrieved_documents_sum", operation="op") == 2
    assert value(metrics, "rag_retrieval_queries_total", operation="op") == 1
    assert value(metrics, "rag_empty_retrievals_total", operation="op") == 0
    assert value(metrics, "rag_retrieval_newest_document_age_seconds_bucket", operation="op",
                 le="900.0") == 1


def test_document_score_tuples_as_langchain_relevance_search_returns_them(metrics, sink):
    docs = [(Document(page_content="a", metadata={"created_at": "2026-01-01T00:00:00Z"}), 0.3),
            (Document(page_content="b"), 0.6)]
    field = retrieve(metrics, sink, docs)
    assert field["documents"] == 2 and field["top_score"] == pytest.approx(0.6)
    expected = time.time() - datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert field["newest_document_age_seconds"] == pytest.approx(expected, abs=5)


def test_dicts_with_similarity_or_distance_and_a_chroma_result(metrics, sink):
    assert retrieve(metrics, sink, [{"id": 1, "similarity": 0.5}, {"id": 2, "score": 0.7}]
                    )["top_score"] == pytest.approx(0.7)
    assert retrieve(metrics, sink, [{"distance": 0.25}, {"distance": 0.5}])["top_score"] == \
        pytest.approx(0.75)
    pinecone = {"matches": [{"id": "a", "score": 0.9, "metadata": {"timestamp": 1_700_000_000}}]}
    field = retrieve(metrics, sink, pinecone)
    assert field["documents"] == 1 and field["top_score"] == pytest.approx(0.9)
    chroma = {"ids": [["a", "b", "c"]], "distances": [[0.1, 0.2, 0.4]],
              "metadatas": [[{"timestamp": 1_700_000_000_000}, None, {}]]}
    field = retrieve(metrics, sink, chroma)
    assert field["documents"] == 3 and field["top_score"] == pytest.approx(0.9)
    assert field["newest_document_age_seconds"] == pytest.approx(time.time() - 1.7e9, abs=5)


def test_plain_strings_and_objects_with_a_score(metrics, sink):
    class NodeWithScore:  # LlamaIndex's shape: .node.metadata and .score
        def __init__(self, score, metadata):
            self.score, self.node = score, type("Node", (), {"metadata": metadata})()

    assert retrieve(metrics, sink, ["a", "b", "c"]) == {
        "documents": 3, "top_score": None, "newest_document_age_seconds": None}
    field = retrieve(metrics, sink, [NodeWithScore(0.55, {"date": "2026-01-02"})])
    assert field["top_score"] == pytest.approx(0.55)
    assert field["newest_document_age_seconds"] is not None


def test_an_empty_retrieval_is_counted(metrics, sink):
    assert retrieve(metrics, sink, [])["documents"] == 0
    assert retrieve(metrics, sink, count=0)["documents"] == 0
    assert value(metrics, "rag_empty_retrievals_total", operation="op") == 2
    assert value(metrics, "rag_retrieval_queries_total", operation="op") == 2


def test_two_retrievals_in_one_query_add_up(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        record_retrieval([{"score": 0.2}])
        record_retrieval([{"score": 0.9}, {"score": 0.1}])

    answer()
    assert sink.records[0]["retrieval"]["documents"] == 3
    assert sink.records[0]["retrieval"]["top_score"] == pytest.approx(0.9)
    assert value(metrics, "rag_retrieval_queries_total", operation="op") == 1


@pytest.mark.parametrize("documents, kwargs", [
    ([{"score": 7}], {}),
    ([{"score": "high"}], {}),
    ([{"timestamp": "yesterday"}], {}),
    ([{"timestamp": time.time() + 86400}], {}),
    (42, {}),
    (None, {"count": -1}),
    (None, {"top_score": float("nan")}),
])
def test_values_that_cannot_be_read_are_counted_never_recorded_as_zero(metrics, sink, documents,
                                                                        kwargs):
    field = retrieve(metrics, sink, documents, **kwargs)
    assert field["top_score"] is None and field["newest_document_age_seconds"] is None
    assert value(metrics, "rag_instrumentation_errors_total", reason="bad_retrieval_value") == 1
    assert not value(metrics, "rag_retrieval_top_score_count", operation="op")


def test_explicit_figures_override_what_the_documents_say(metrics, sink):
    newest = datetime.now(timezone.utc) - timedelta(hours=2)
    field = retrieve(metrics, sink, [{"score": 0.1}], count=5, top_score=0.95,
                     newest_document_time=newest)
    assert field["documents"] == 5 and field["top_score"] == pytest.approx(0.95)
    assert field["newest_document_age_seconds"] == pytest.approx(7200, abs=5)


def test_outside_a_query_it_counts_and_does_not_raise():
    import ragmon
    before = ragmon.metrics.registry.get_sample_value(
        "rag_instrumentation_errors_total", {"reason": "no_active_query"}) or 0
    assert record_retrieval(["a"]) is None
    assert ragmon.metrics.registry.get_sample_value(
        "rag_instrumentation_errors_total", {"reason": "no_active_query"}) == before + 1


def test_numpy_scores_as_faiss_returns_them(metrics, sink):
    import numpy as np
    docs = [(Document(page_content="a"), np.float32(0.25)), (Document(page_content="b"),
                                                              np.float64(0.5))]
    assert retrieve(metrics, sink, docs)["top_score"] == pytest.approx(0.5)
    assert retrieve(metrics, sink, [{"score": np.float32(0.75)}])["top_score"] == \
        pytest.approx(0.75)
