"""LLMTestServer's per-request billing and held requests, driven by the real `openai` SDK
(and `anthropic` for its wire format)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from ragmon.stack.process import wait_until
from ragmon.testing import LLMTestServer
from ragmon.testing.llm_server import BILLED_KINDS, HOLD_MARKER

PROMPT = "Which city is the capital of France"  # 7 words: 7 input tokens
LONG_REPLY = " ".join(f"word{i}" for i in range(20))


@pytest.fixture
def server():
    with LLMTestServer(cached_tokens=5, reasoning_tokens=2) as running:
        yield running


def client_of(server: LLMTestServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)


def ask(server: LLMTestServer, prompt: str = PROMPT, request_id: str | None = None, **options):
    headers = {"X-Client-Request-Id": request_id} if request_id else {}
    return client_of(server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
        extra_headers=headers, **options)


def whole_stream(server: LLMTestServer, prompt: str = PROMPT, request_id: str | None = None):
    """Reads a stream to its end; returns its text and the usage chunk."""
    chunks = list(ask(server, prompt, request_id, stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage


def expected_entry(usage, model: str) -> dict:
    """What the server must bill for one answer, from the usage the SDK read."""
    cached = usage.prompt_tokens_details.cached_tokens
    reasoning = usage.completion_tokens_details.reasoning_tokens
    return {"model": model, "input": usage.prompt_tokens - cached, "cached_input": cached,
            "cache_write_5m": 0, "cache_write_1h": 0, "output": usage.completion_tokens,
            "reasoning": reasoning}


def test_a_json_answer_is_billed_under_the_callers_request_id(server):
    assert server.billed_by_request() == {}
    completion = ask(server, request_id="query-1")
    entry = expected_entry(completion.usage, completion.model)
    assert entry == {"model": "gpt-4o-mini-2024-07-18", "input": 7, "cached_input": 5,
                     "cache_write_5m": 0, "cache_write_1h": 0, "output": 6 + 2, "reasoning": 2}
    assert server.billed_by_request() == {"query-1": entry}
    assert set(entry) == {"model", *BILLED_KINDS}
    # The per-request ledger and the per-model tally agree on a whole answer.
    assert {kind: server.billed()[completion.model][kind] for kind in BILLED_KINDS} == {
        kind: entry[kind] for kind in BILLED_KINDS}


def test_without_a_request_id_header_the_servers_own_id_is_the_key(server):
    completion = ask(server)
    assert completion._request_id and completion._request_id.startswith("req_")
    assert server.billed_by_request() == {
        completion._request_id: expected_entry(completion.usage, completion.model)}


def test_two_whole_answers_under_one_request_id_add_up(server):
    first = ask(server, request_id="retried")
    ask(server, "a second try of the same question", request_id="retried")
    entry = server.billed_by_request()["retried"]
    assert entry["input"] == 7 + 7 and entry["cached_input"] == 5 + 5
    assert entry["output"] == 2 * first.usage.completion_tokens


def test_a_stream_read_to_its_end_is_billed_whole(server):
    text, usage = whole_stream(server, request_id="stream-1")
    assert text == "Paris is the capital of France."
    assert server.billed_by_request() == {
        "stream-1": expected_entry(usage, "gpt-4o-mini-2024-07-18")}


def test_a_stream_the_client_abandons_is_not_billed_per_request(server):
    # Slow chunks keep the server writing long after the client hangs up, so it sees the hang-up.
    server.configure(reply=LONG_REPLY, chunk_delay=0.2)
    stream = ask(server, request_id="abandoned", stream=True,
                 stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # one word read
    stream.close()
    wait_until(lambda: server.in_flight == 0, 30, what="the abandoned stream to end", interval=0.05)
    assert "abandoned" not in server.billed_by_request()
    # The provider's tally keeps what was generated before the hang-up: part of the answer.
    [generated] = server.billed().values()
    assert generated["input"] == 7
    assert 2 + 1 <= generated["output"] < 2 + len(LONG_REPLY.split())
    # The same request read whole is billed under its id.
    server.configure(chunk_delay=0.0)
    whole_stream(server, request_id="whole")
    assert set(server.billed_by_request()) == {"whole"}


def test_held_requests_wait_until_released_json_and_streams(server):
    assert server.held == 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = [pool.submit(ask, server, f"{HOLD_MARKER} question {i}", f"json-{i}")
                   for i in range(2)]
        answers += [pool.submit(whole_stream, server, f"question {i} {HOLD_MARKER}", f"stream-{i}")
                    for i in range(2)]
        wait_until(lambda: server.held == 4, 30, what="4 held requests", interval=0.05)
        # Held requests are in flight and unanswered; others pass them by.
        assert server.in_flight == 4
        assert not any(answer.done() for answer in answers)
        ask(server, request_id="not-held")
        assert set(server.billed_by_request()) == {"not-held"}
        assert server.held == 4

        assert server.release_held() == 4
        assert server.held == 0
        first_json, first_stream = answers[0].result(timeout=30), answers[2].result(timeout=30)
        for answer in answers:
            answer.result(timeout=30)
    assert first_json.choices[0].message.content == "Paris is the capital of France."
    assert first_stream[0] == "Paris is the capital of France."
    assert set(server.billed_by_request()) == {"not-held", "json-0", "json-1", "stream-0",
                                               "stream-1"}
    assert server.billed_by_request()["json-0"]["input"] == 3  # "[hold] question 0"
    assert server.in_flight == 0


def test_a_hold_prompt_after_a_release_waits_again(server):
    assert server.release_held() == 0  # nothing held: nothing released
    with ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(ask, server, f"{HOLD_MARKER} later", "later")
        wait_until(lambda: server.held == 1, 30, what="the held request", interval=0.05)
        assert not later.done() and "later" not in server.billed_by_request()
        assert server.release_held() == 1
        later.result(timeout=30)
    assert "later" in server.billed_by_request()


def test_stop_releases_held_requests():
    server = LLMTestServer().start()
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(ask, server, f"{HOLD_MARKER} at shutdown")
        wait_until(lambda: server.held == 1, 30, what="the held request", interval=0.05)
        server.stop()
        assert held.result(timeout=30).choices[0].message.content
    assert server.held == 0


def test_anthropic_answers_are_billed_per_request_too(server):
    client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)
    message = client.messages.create(model="claude-3-5-haiku", max_tokens=50,
                                     messages=[{"role": "user", "content": PROMPT}])
    with client.messages.stream(model="claude-3-5-haiku", max_tokens=50,
                                messages=[{"role": "user", "content": PROMPT}],
                                extra_headers={"X-Client-Request-Id": "claude-stream"}) as stream:
        streamed = stream.get_final_message()
    billed = server.billed_by_request()
    assert set(billed) == {message._request_id, "claude-stream"}
    for request_id, answer in ((message._request_id, message), ("claude-stream", streamed)):
        entry = billed[request_id]
        assert entry["model"] == answer.model == "claude-3-5-haiku-20241022"
        assert (entry["input"], entry["cached_input"], entry["output"]) == (
            answer.usage.input_tokens, answer.usage.cache_read_input_tokens,
            answer.usage.output_tokens)
