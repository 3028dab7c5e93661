"""Property-based tests: whatever a host passes, monitoring changes nothing the host sees, /metrics
stays valid, every record parses back and is attributable, and no secret reaches an output."""
import json
import math
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ragmon.instrument.catalog import RAGMetrics
from ragmon import (monitored_query, record_tokens, set_attributes, stage,
                                         track_cache_operation, track_rate_limit)
from ragmon.instrument.jsonlog import StructuredLogger
from ragmon.instrument.records import DailyFileSink, encode, make_record
from tests.conftest import ListSink, make_settings, require_binaries
from tests.instrument.secret_samples import SECRETS

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


class StrRaises:
    def __str__(self):
        raise RuntimeError("__str__ fails")

    __repr__ = __str__


class Weird(Exception):
    def __str__(self):
        raise RuntimeError("exception __str__ fails")


texts = st.text(alphabet=st.characters(codec=None, categories=None), max_size=300)  # surrogates too
numbers = st.one_of(st.integers(min_value=-10**40, max_value=10**40), st.floats(allow_nan=True),
                    st.booleans(), st.none())
objects = st.one_of(st.builds(StrRaises), st.builds(object), st.just(math.inf), st.just(Path("/x")))
scalars = st.one_of(texts, numbers, objects)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)),
                      max_leaves=12)
FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "relevance_score",
          "context_precision", "model")
results = st.one_of(values, st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=6),
                    st.dictionaries(st.one_of(st.sampled_from(FIELDS), texts), values, max_size=6))


def check_exposition(registry):
    body = generate_latest(registry)
    list(text_string_to_metric_families(body.decode("utf-8")))  # parses
    return body


def promtool_check(body: bytes) -> None:
    (promtool,) = require_binaries("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result


@pytest.fixture(scope="module")
def catalog():
    return RAGMetrics(registry=CollectorRegistry(), settings=make_settings())


def parse_back(record: dict) -> dict:
    parsed = json.loads(encode(record))
    assert isinstance(parsed["request_id"], str) and parsed["request_id"]
    assert isinstance(parsed["operation"], str) and parsed["timestamp"]
    return parsed


@PROPERTY_SETTINGS
@given(result=results, operation=texts.filter(lambda t: t.strip()), model=texts,
       stage_name=texts, attributes=st.dictionaries(st.text(min_size=1, max_size=20), values, max_size=3))
def test_any_return_value_passes_through_and_leaves_valid_metrics_and_records(
        catalog, result, operation, model, stage_name, attributes):
    sink = ListSink()

    @monitored_query(operation, metrics=catalog, request_log=sink)
    def query():
        if stage_name.strip():
            with stage(stage_name):
                pass
        set_attributes(**{f"a{i}": v for i, v in enumerate(attributes.values())})
        if model.strip():
            record_tokens(3, model=model)
        return result

    assert query() is result
    check_exposition(catalog.registry)
    (record,) = sink.records
    parse_back(record)


@PROPERTY_SETTINGS
@given(message=st.one_of(texts, objects), operation=texts.filter(lambda t: t.strip()),
       weird=st.booleans())
def test_any_exception_is_reraised_unchanged(catalog, message, operation, weird):
    sink = ListSink()
    error = Weird() if weird else ValueError(message)

    @monitored_query(operation, metrics=catalog, request_log=sink)
    def query():
        raise error

    with pytest.raises(BaseException) as raised:
        query()
    assert raised.value is error
    check_exposition(catalog.registry)
    parse_back(sink.records[0])


@PROPERTY_SETTINGS
@given(cache_type=texts, provider=texts, headers=st.dictionaries(st.one_of(texts, objects), scalars, max_size=4),
       model=texts, tokens=st.integers(min_value=0, max_value=10**40))
def test_helpers_raise_only_clear_value_errors_and_keep_metrics_valid(catalog, cache_type, provider,
                                                                      headers, model, tokens):
    for call in (lambda: track_cache_operation(True, cache_type, metrics=catalog),
                 lambda: track_rate_limit(provider, headers=headers, metrics=catalog),
                 lambda: record_tokens(tokens, model=model, metrics=catalog)):
        try:
            call()
        except ValueError as exc:  # a programming error (an empty name): said clearly
            assert "must be a non-empty string" in str(exc)
    check_exposition(catalog.registry)


def test_after_all_that_promtool_accepts_the_metrics(catalog):
    """Runs after the properties above have filled the module's catalog with hostile values."""
    body = check_exposition(catalog.registry)
    assert b"rag_queries_total" in body
    promtool_check(body)


secret_texts = st.builds(lambda before, kind, after: f"{before} | {kind[1]} | {after}",
                         texts, st.sampled_from(SECRETS), texts)


@PROPERTY_SETTINGS
@given(note=secret_texts, extra=st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=3))
def test_no_secret_reaches_a_log_line_or_a_record(note, extra):
    secret = next(s for _kind, text, s in SECRETS if text in note)
    assume(extra.get("note") is None)
    with tempfile.TemporaryDirectory() as tmp:
        logger = StructuredLogger("svc", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=tmp))
        logger.info("event", note=note, **{f"x_{k}": v for k, v in extra.items()})
        try:
            raise RuntimeError(note)
        except RuntimeError as exc:
            logger.log_error(exc)
        sink = DailyFileSink(Path(tmp) / "records")
        sink.write(make_record(request_id="r", service="s", env="development", operation="op",
                               model="m", status="success", error_type=None, start_time=0.0,
                               total_time=1.0, stages={}, attributes={"note": note, **extra}), at=1.0)
        for path in Path(tmp).rglob("*.json*"):
            text = path.read_text(encoding="utf-8")
            for line in filter(None, text.split("\n")):  # JSON lines end in \n only
                json.loads(line)
            assert secret not in text


@PROPERTY_SETTINGS
@given(records=st.lists(st.tuples(st.dictionaries(texts, values, max_size=4),
                                  st.integers(min_value=0, max_value=3)), min_size=1, max_size=20))
def test_every_record_the_sink_writes_parses_back_whole(records):
    with tempfile.TemporaryDirectory() as tmp:
        sink = DailyFileSink(tmp)
        for n, (attributes, day) in enumerate(records):
            sink.write(make_record(request_id=f"r{n}", service="s", env="development",
                                   operation="op", model=None, status="success", error_type=None,
                                   start_time=0.0, total_time=1.0, stages={},
                                   attributes=attributes), at=day * 86400.0 + 1)
        sink.close()
        ids = []
        for path in Path(tmp).iterdir():
            for line in filter(None, path.read_bytes().split(b"\n")):
                ids.append(json.loads(line)["request_id"])
        assert sorted(ids) == sorted(f"r{n}" for n in range(len(records)))
        assert (sink.written, sink.lost) == (len(records), 0)
