import asyncio
import contextlib
import threading
import traceback

import pytest

from m2_3_monitoring import (current_request_id, monitored_query, record_quality, record_tokens,
                             request_context, set_attributes, stage)


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_sync_function_records_latency_status_tokens_cost_quality_and_one_record(metrics, sink):
    @monitored_query(operation="rag_search", model="gpt-4", metrics=metrics, request_log=sink)
    def answer(question):
        with stage("retrieval", top_k=3) as s:
            s.metadata["documents"] = 3
        return {"answer": "42", "input_tokens": 600, "output_tokens": 150, "relevance_score": 0.85,
                "cached_input_tokens": 100, "context_precision": 0.5}

    # input_tokens is the whole prompt (OpenAI's convention): 500 uncached + 100 cache reads.
    assert answer("q") == {"answer": "42", "input_tokens": 600, "output_tokens": 150, "relevance_score": 0.85,
                           "cached_input_tokens": 100, "context_precision": 0.5}
    assert value(metrics, "rag_query_duration_seconds_count", operation="rag_search") == 1
    assert value(metrics, "rag_queries_total", operation="rag_search", status="success") == 1
    assert value(metrics, "rag_tokens_total", model="gpt-4", token_type="input") == 500
    assert value(metrics, "rag_tokens_total", model="gpt-4", token_type="output") == 150
    assert value(metrics, "rag_tokens_total", model="gpt-4", token_type="cached_input") == 100
    expected_cost = (500 * 0.003 + 150 * 0.015 + 100 * 0.0003) / 1000
    assert value(metrics, "rag_spend_dollars_total", model="gpt-4") == pytest.approx(expected_cost)
    assert value(metrics, "rag_query_cost_dollars_count", model="gpt-4") == 1
    assert value(metrics, "rag_relevance_score_sum", operation="rag_search") == pytest.approx(0.85)
    assert value(metrics, "rag_context_precision_sum", operation="rag_search") == pytest.approx(0.5)
    assert value(metrics, "rag_stage_duration_seconds_count", operation="rag_search", stage="retrieval") == 1
    assert value(metrics, "rag_queries_in_flight", operation="rag_search") == 0

    [record] = sink.records
    assert record["operation"] == "rag_search" and record["model"] == "gpt-4"
    assert record["status"] == "success" and record["error_type"] is None
    assert record["tokens"] == {"input": 500, "output": 150, "cached_input": 100}
    assert record["cost"] == pytest.approx(expected_cost)
    assert record["stages"]["retrieval"]["metadata"] == {"top_k": 3, "documents": 3}
    assert record["total_time"] >= record["stages"]["retrieval"]["duration"]
    assert record["relevance_score"] == 0.85 and record["request_id"]


def test_exceptions_pass_through_as_the_same_object_with_the_same_traceback(metrics, sink):
    original = ValueError("boom")

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def fail():
        raise original

    with pytest.raises(ValueError) as err:
        fail()
    assert err.value is original
    frames = [frame.name for frame in traceback.extract_tb(err.value.__traceback__)]
    assert frames[-1] == "fail"
    assert value(metrics, "rag_errors_total", operation="op", error_type="ValueError") == 1
    assert value(metrics, "rag_queries_total", operation="op", status="error") == 1
    assert value(metrics, "rag_queries_in_flight", operation="op") == 0
    assert sink.records[0]["status"] == "error" and sink.records[0]["error_type"] == "ValueError"


def test_in_flight_counts_queries_while_they_run(metrics):
    inside = []

    @monitored_query(operation="op", metrics=metrics, request_log=False)
    def work():
        inside.append(value(metrics, "rag_queries_in_flight", operation="op"))

    work()
    assert inside == [1] and value(metrics, "rag_queries_in_flight", operation="op") == 0


@pytest.mark.parametrize("result, reason_count", [
    ({"input_tokens": "many", "output_tokens": 10}, 1),
    ({"input_tokens": -5}, 1),
    ({"relevance_score": 7}, 1),
    ({"model": ""}, 1),
    ("plain string", 0),
    (None, 0),
    ({"answer": "no usage at all"}, 0),
])
def test_malformed_return_values_never_break_the_call(metrics, sink, result, reason_count):
    @monitored_query(operation="op", model="m", metrics=metrics, request_log=sink)
    def work():
        return result

    assert work() is result
    assert (value(metrics, "rag_instrumentation_errors_total", reason="bad_return_value") or 0) == reason_count
    assert value(metrics, "rag_queries_total", operation="op", status="success") == 1
    if isinstance(result, dict) and result.get("output_tokens") == 10:  # the good field still counts
        assert value(metrics, "rag_tokens_total", model="m", token_type="output") == 10


def test_a_failing_record_sink_is_counted_not_raised(metrics):
    class BrokenSink:
        def write(self, record, at=None):
            raise OSError("disk full")

    @monitored_query(operation="op", metrics=metrics, request_log=BrokenSink())
    def work():
        return 1

    assert work() == 1
    assert value(metrics, "rag_instrumentation_errors_total", reason="record_write") == 1


@pytest.mark.parametrize("fails", [False, True])
def test_a_finished_query_is_counted_before_it_leaves_in_flight(metrics, fails):
    """A scrape at any moment sees the query in flight or counted, never neither."""
    seen = []

    class WatchingSink:  # the record is written at the end of the counting
        def write(self, record, at=None):
            seen.append((value(metrics, "rag_queries_in_flight", operation="op"),
                         value(metrics, "rag_queries_total", operation="op", status=record["status"])))

    @monitored_query(operation="op", metrics=metrics, request_log=WatchingSink())
    def work():
        if fails:
            raise KeyError("x")
        return 1

    @monitored_query(operation="op", metrics=metrics, request_log=WatchingSink())
    async def work_async():
        return work.__wrapped__()

    for call in (work, lambda: asyncio.run(work_async())):
        with pytest.raises(KeyError) if fails else contextlib.nullcontext():
            call()
    assert seen == [(1.0, 1.0), (1.0, 2.0)]
    assert value(metrics, "rag_queries_in_flight", operation="op") == 0


def test_async_functions_are_monitored(metrics, sink):
    @monitored_query(operation="async_op", model="gpt-4", metrics=metrics, request_log=sink)
    async def answer():
        async with stage("generation"):
            await asyncio.sleep(0.01)
        return {"input_tokens": 10, "output_tokens": 5}

    assert asyncio.run(answer()) == {"input_tokens": 10, "output_tokens": 5}
    assert value(metrics, "rag_queries_total", operation="async_op", status="success") == 1
    assert value(metrics, "rag_stage_duration_seconds_sum", operation="async_op", stage="generation") >= 0.01
    assert sink.records[0]["tokens"]["input"] == 10


def test_concurrent_async_queries_keep_their_own_context(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    async def answer(n):
        with stage(f"s{n}"):
            await asyncio.sleep(0.01 * (3 - n))
        return {"relevance_score": n / 10}

    async def main():
        await asyncio.gather(*(answer(n) for n in range(3)))

    asyncio.run(main())
    by_score = {r["relevance_score"]: r for r in sink.records}
    for n in range(3):
        assert list(by_score[n / 10]["stages"]) == [f"s{n}"]
    assert len({r["request_id"] for r in sink.records}) == 3


def test_cancelled_async_query_is_counted_as_cancelled(metrics):
    @monitored_query(operation="op", metrics=metrics, request_log=False)
    async def slow():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert value(metrics, "rag_queries_total", operation="op", status="cancelled") == 1
    assert value(metrics, "rag_queries_in_flight", operation="op") == 0


def test_generators_record_time_to_first_token_and_reported_tokens(metrics, sink):
    @monitored_query(operation="stream", model="gpt-4", metrics=metrics, request_log=sink)
    def stream():
        seen.append(current_request_id())
        for chunk in ("a", "b", "c"):
            yield chunk
        record_tokens(input_tokens=20, output_tokens=3)

    seen = []
    assert list(stream()) == ["a", "b", "c"]
    assert current_request_id() is None  # the context does not leak to the consumer
    assert value(metrics, "rag_time_to_first_token_seconds_count", operation="stream", model="gpt-4") == 1
    assert value(metrics, "rag_tokens_total", model="gpt-4", token_type="output") == 3
    assert sink.records[0]["time_to_first_token"] is not None
    assert sink.records[0]["request_id"] == seen[0]


def test_generator_return_value_dict_is_read(metrics):
    @monitored_query(operation="stream", model="m", metrics=metrics, request_log=False)
    def stream():
        yield "x"
        return {"output_tokens": 7}

    gen = stream()
    assert next(gen) == "x"
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == {"output_tokens": 7}
    assert value(metrics, "rag_tokens_total", model="m", token_type="output") == 7


def test_generator_closed_early_is_cancelled_and_error_inside_is_counted(metrics):
    @monitored_query(operation="stream", metrics=metrics, request_log=False)
    def stream(fail):
        yield 1
        if fail:
            raise KeyError("gone")
        yield 2

    gen = stream(False)
    next(gen)
    gen.close()
    assert value(metrics, "rag_queries_total", operation="stream", status="cancelled") == 1
    with pytest.raises(KeyError):
        list(stream(True))
    assert value(metrics, "rag_errors_total", operation="stream", error_type="KeyError") == 1
    assert value(metrics, "rag_queries_in_flight", operation="stream") == 0


def test_generator_send_and_throw_are_forwarded(metrics):
    @monitored_query(operation="g", metrics=metrics, request_log=False)
    def echo():
        received = yield "ready"
        try:
            yield f"got {received}"
        except RuntimeError as exc:
            yield f"handled {exc}"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("x") == "got x"
    assert gen.throw(RuntimeError("oops")) == "handled oops"


def test_async_generators_are_monitored(metrics, sink):
    @monitored_query(operation="astream", model="gpt-4", metrics=metrics, request_log=sink)
    async def stream():
        for chunk in range(3):
            await asyncio.sleep(0)
            yield chunk
        record_tokens(output_tokens=3)

    async def consume():
        return [chunk async for chunk in stream()]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert value(metrics, "rag_time_to_first_token_seconds_count", operation="astream", model="gpt-4") == 1
    assert value(metrics, "rag_tokens_total", model="gpt-4", token_type="output") == 3
    assert sink.records[0]["status"] == "success"


def test_request_ids_are_set_inherited_and_bindable(metrics, sink):
    @monitored_query(operation="inner", metrics=metrics, request_log=sink)
    def inner():
        return current_request_id()

    @monitored_query(operation="outer", metrics=metrics, request_log=sink)
    def outer():
        return current_request_id(), inner()

    outer_id, inner_id = outer()
    assert outer_id == inner_id and outer_id is not None
    assert outer()[0] != outer_id  # a new query, a new id
    with request_context("req-from-header"):
        assert outer()[0] == "req-from-header"
    with pytest.raises(ValueError, match="non-empty string"):
        with request_context(""):
            pass


def test_attributes_and_quality_set_inside_the_query_reach_the_record(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def work():
        set_attributes(agent_type="simple", tool_calls=2)
        record_quality(relevance_score=0.4, context_precision=0.9)

    work()
    assert sink.records[0]["attributes"] == {"agent_type": "simple", "tool_calls": 2}
    assert sink.records[0]["relevance_score"] == 0.4
    assert set_attributes(x=1) is False  # outside a query: counted, not raised
    with pytest.raises(RuntimeError, match="outside a @monitored_query"):
        record_quality(relevance_score=0.5)


def test_threads_keep_their_own_query_context(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def work(n):
        with stage(f"stage{n}"):
            pass
        return current_request_id()

    ids = []
    threads = [threading.Thread(target=lambda n=n: ids.append(work(n))) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8
    assert all(len(r["stages"]) == 1 for r in sink.records)


@pytest.mark.parametrize("kwargs, expected", [
    ({"operation": ""}, "operation=''"),
    ({"operation": 3}, "operation=3"),
    ({"operation": "op", "model": ""}, "model=''"),
    ({"operation": "op", "metrics": "registry"}, "not a RAGMetrics"),
])
def test_bad_decorator_arguments_raise_clear_errors(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        monitored_query(**kwargs)


def test_unknown_model_from_return_value_is_priced_at_default_and_counted(metrics):
    @monitored_query(operation="op", metrics=metrics, request_log=False)
    def work():
        return {"model": "mystery-model", "input_tokens": 1000}

    work()
    assert value(metrics, "rag_unknown_model_total") == 1
    assert value(metrics, "rag_spend_dollars_total", model="mystery-model") == pytest.approx(0.003)


def test_unusable_configuration_leaves_the_function_unmonitored_but_working(registry, monkeypatch):
    from ragmon.settings import ConfigError
    from ragmon.instrument.catalog import RAGMetrics

    class BrokenSettingsMetrics(RAGMetrics):
        @property
        def settings(self):
            raise ConfigError("METRICS_PORT='abc' is not a whole number")

    m = BrokenSettingsMetrics(registry=registry)

    @monitored_query(operation="op", metrics=m)
    def work(x):
        return x * 2

    assert work(21) == 42
    assert work(1) == 2  # no second setup attempt within the minute
    assert registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "setup"}) == 1


def test_a_bad_returned_value_is_named_by_field_and_type_never_quoted(metrics, sink, caplog):
    secret = "sk-proj-abcdefghijklmnop1234"

    @monitored_query(operation="rag_search", model="gpt-4", metrics=metrics, request_log=sink)
    def answer():
        return {"input_tokens": secret, "output_tokens": 5, "relevance_score": "very relevant 555-12-3456"}

    with caplog.at_level("WARNING", logger="ragmon"):
        answer()
    logged = caplog.text
    assert "input_tokens of type str" in logged and "relevance_score of type str" in logged
    assert secret not in logged and "sk-proj" not in logged and "555-12-3456" not in logged
    assert value(metrics, "rag_instrumentation_errors_total", reason="bad_return_value") == 2
    assert sink.records[0]["tokens"]["output"] == 5


class GetRaises(dict):
    """A Mapping of the application's own whose reading fails for some keys."""

    def get(self, key, default=None):
        if key in ("input_tokens", "relevance_score", "usage"):
            raise RuntimeError(f"cannot read {key}")
        return super().get(key, default)


def test_a_returned_mapping_whose_get_raises_still_gets_its_record_without_those_fields(metrics, sink):
    @monitored_query(operation="rag_search", model="gpt-4", metrics=metrics, request_log=sink)
    def answer():
        return GetRaises(output_tokens=150, model="gpt-4o-mini", context_precision=0.5)

    result = answer()
    assert type(result) is GetRaises
    (record,) = sink.records
    assert record["status"] == "success" and record["model"] == "gpt-4o-mini"
    assert record["tokens"]["output"] == 150 and record["tokens"]["input"] == 0
    assert record["context_precision"] == 0.5 and record["relevance_score"] is None
    assert value(metrics, "rag_instrumentation_errors_total", reason="bad_return_value") >= 2
    assert value(metrics, "rag_instrumentation_errors_total", reason="recording") is None
