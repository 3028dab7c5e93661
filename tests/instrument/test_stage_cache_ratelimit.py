import asyncio

import pytest

from m2_3_monitoring import monitored_query, observe_stage, stage, track_cache_operation, track_rate_limit


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_stage_outside_a_query_is_labelled_none(metrics):
    with stage("retrieval", metrics=metrics):
        pass
    assert value(metrics, "rag_stage_duration_seconds_count", operation="none", stage="retrieval") == 1


def test_stage_as_sync_and_async_decorator(metrics, sink):
    @stage("embedding", metrics=metrics)
    def embed():
        return "vector"

    @stage("generation", metrics=metrics)
    async def generate():
        await asyncio.sleep(0)
        return "text"

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def query():
        return embed(), asyncio.run(generate())

    assert query() == ("vector", "text")
    # asyncio.run copies the context, and the copy still points at this query.
    assert set(sink.records[0]["stages"]) == {"embedding", "generation"}
    assert value(metrics, "rag_stage_duration_seconds_count", operation="op", stage="embedding") == 1
    assert value(metrics, "rag_stage_duration_seconds_count", operation="op", stage="generation") == 1


def test_retrieval_and_generation_are_separate_series(metrics):
    @monitored_query(operation="rag", metrics=metrics, request_log=False)
    def query():
        with stage("retrieval"):
            pass
        with stage("generation"):
            pass

    query()
    for name in ("retrieval", "generation"):
        assert value(metrics, "rag_stage_duration_seconds_count", operation="rag", stage=name) == 1


def test_stage_timing_survives_an_exception_in_the_block(metrics):
    with pytest.raises(ZeroDivisionError):
        with stage("generation", metrics=metrics):
            1 / 0
    assert value(metrics, "rag_stage_duration_seconds_count", operation="none", stage="generation") == 1


def test_a_stage_run_twice_in_one_query_adds_up(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def query():
        observe_stage("retrieval", 0.25, {"round": 1})
        observe_stage("retrieval", 0.5, {"round": 2})

    query()
    assert sink.records[0]["stages"]["retrieval"] == {"duration": 0.75, "metadata": {"round": 2}}


@pytest.mark.parametrize("name", ["", None, 5])
def test_stage_names_are_checked(name):
    with pytest.raises(ValueError, match="stage="):
        stage(name)


@pytest.mark.parametrize("duration", [-1, float("nan"), "1s", True])
def test_observe_stage_rejects_bad_durations(metrics, duration):
    with pytest.raises(ValueError, match="duration="):
        observe_stage("retrieval", duration, metrics=metrics)


def test_cache_operations_by_type_and_result(metrics, sink):
    track_cache_operation(hit=True, cache_type="semantic", metrics=metrics)
    track_cache_operation(hit=False, cache_type="semantic", metrics=metrics)
    track_cache_operation(hit=False, cache_type="embedding", metrics=metrics)
    assert value(metrics, "rag_cache_operations_total", cache_type="semantic", result="hit") == 1
    assert value(metrics, "rag_cache_operations_total", cache_type="semantic", result="miss") == 1
    assert value(metrics, "rag_cache_operations_total", cache_type="embedding", result="miss") == 1

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def query():
        track_cache_operation(hit=True)  # the query's catalog is used
        track_cache_operation(hit=False)

    query()
    assert sink.records[0]["cache"] == {"hits": 1, "misses": 1}
    assert value(metrics, "rag_cache_operations_total", cache_type="semantic", result="hit") == 2


@pytest.mark.parametrize("kwargs, expected", [({"hit": "yes"}, "hit='yes'"), ({"cache_type": ""}, "cache_type=''")])
def test_cache_arguments_are_checked(metrics, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        track_cache_operation(metrics=metrics, **kwargs)


def test_rate_limits_from_numbers_and_headers(metrics):
    assert track_rate_limit("openai", remaining_requests=99, remaining_tokens=5000, metrics=metrics) == \
        {"requests": 99, "tokens": 5000}
    assert value(metrics, "rag_rate_limit_remaining_requests", provider="openai") == 99
    recorded = track_rate_limit("openai", headers={"X-RateLimit-Remaining-Requests": "42",
                                                   "x-ratelimit-remaining-tokens": " 1200 "}, metrics=metrics)
    assert recorded == {"requests": 42, "tokens": 1200}
    assert value(metrics, "rag_rate_limit_remaining_tokens", provider="openai") == 1200
    track_rate_limit("anthropic", headers={"anthropic-ratelimit-requests-remaining": "7"}, metrics=metrics)
    assert value(metrics, "rag_rate_limit_remaining_requests", provider="anthropic") == 7


def test_unparsable_headers_are_counted_not_raised(metrics):
    recorded = track_rate_limit("openai", headers={"x-ratelimit-remaining-requests": "lots"}, metrics=metrics)
    assert recorded == {}
    assert value(metrics, "rag_instrumentation_errors_total", reason="bad_header") == 1


@pytest.mark.parametrize("kwargs, expected", [
    ({"provider": ""}, "provider=''"),
    ({"provider": "openai", "remaining_requests": -1}, "remaining_requests=-1"),
    ({"provider": "openai", "remaining_tokens": "many"}, "remaining_tokens='many'"),
])
def test_bad_rate_limit_arguments_raise(metrics, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        track_rate_limit(metrics=metrics, **kwargs)


def test_observe_stage_can_stay_out_of_the_enclosing_query(metrics, sink):
    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def query():
        observe_stage("retrieval", 0.1, metrics=metrics, operation="batch", attach=False)

    query()
    assert sink.records[0]["stages"] == {}
    assert value(metrics, "rag_stage_duration_seconds_count", operation="batch", stage="retrieval") == 1
