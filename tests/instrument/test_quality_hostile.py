"""Property-based: whatever a host passes to the quality calls, nothing raises into it, the
query's answer is untouched, /metrics stays valid and every record parses back."""
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ragmon import (RAGMetrics, monitored_query, record_feedback, record_retrieval,
                    record_scores)
from ragmon.instrument import hooks
from ragmon.instrument.quality import finish_query
from ragmon.instrument.records import encode
from tests.conftest import ListSink, make_settings

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


class StrRaises:
    def __str__(self):
        raise RuntimeError("__str__ fails")

    __repr__ = __str__


texts = st.text(alphabet=st.characters(codec=None, categories=None), max_size=80)
anything = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
              st.floats(allow_nan=True), texts, st.builds(StrRaises)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(texts, st.integers()), inner, max_size=4),
                            st.tuples(inner, inner)),
    max_leaves=12)


@pytest.fixture(autouse=True)
def quality_hook_removed():
    yield
    hooks.remove(finish_query)


@PROPERTY_SETTINGS
@given(scores=anything, named=st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                                              anything, max_size=3),
       documents=anything, count=anything, top=anything, newest=anything,
       request_id=anything, thumbs=anything, rating=anything, reason=anything)
def test_no_quality_input_reaches_the_host(scores, named, documents, count, top, newest,
                                           request_id, thumbs, rating, reason):
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings())
    sink = ListSink()

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def answer():
        record_scores(scores, **named)
        record_retrieval(documents, count=count, top_score=top, newest_document_time=newest)
        return "the answer"

    assert answer() == "the answer"
    record_scores(scores, request_id=request_id, metrics=metrics, request_log=sink)
    result = record_feedback(request_id, thumbs=thumbs, rating=rating, reason=reason,
                             metrics=metrics, request_log=sink)
    assert result.accepted in (True, False) and isinstance(result.message, str)
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    assert families
    for record in sink.records:
        parsed = json.loads(encode(record))
        for value in (parsed.get("scores") or {}).values():
            assert 0 <= value <= 1
        retrieval = parsed.get("retrieval")
        if retrieval is not None:
            top_score = retrieval["top_score"]
            assert top_score is None or (0 <= top_score <= 1 and math.isfinite(top_score))
            age = retrieval["newest_document_age_seconds"]
            assert age is None or age >= 0
