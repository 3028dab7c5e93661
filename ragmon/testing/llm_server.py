"""A local server that speaks the OpenAI, Anthropic and Gemini wire formats, for tests and the
notebook.

Point the real SDKs at it and they behave as against the providers, with deterministic usage::

    from ragmon.testing import LLMTestServer
    import openai, anthropic

    with LLMTestServer(cached_tokens=100, reasoning_tokens=20) as server:
        oa = openai.OpenAI(base_url=server.openai_base_url, api_key="test")
        reply = oa.chat.completions.create(model="gpt-4o-mini", messages=[...])
        ac = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test")
        gc = google.genai.Client(api_key="test", http_options={"base_url": server.gemini_base_url})
        server.billed()   # {"gpt-4o-mini-2024-07-18": {"input": .., "output": .., ...}}

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE with ``stream_options.include_usage``),
``POST /v1/responses`` (JSON or SSE events), ``POST /v1/messages`` (JSON or SSE events
``message_start`` ... ``message_stop``), ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` (Gemini: ``usageMetadata`` with ``cachedContentTokenCount``
inside ``promptTokenCount`` and ``thoughtsTokenCount`` beside ``candidatesTokenCount``; stream
chunks restate the usage so far). OpenAI and Anthropic responses carry the provider's rate-limit
headers (``x-ratelimit-*`` / ``anthropic-ratelimit-*``), counted down per request and token;
Gemini's API sends none (its limits show as 429 ``RESOURCE_EXHAUSTED`` errors).

Usage is computed, not random: input tokens are the words of the prompt; output tokens are the
words of the reply (one per streamed chunk) plus ``reasoning_tokens``. The knobs (constructor
arguments or ``configure()``): ``reply``, ``cached_tokens`` (prompt-cache reads, added to the
prompt), ``cache_write_tokens`` (cache writes, OpenAI and Anthropic) / ``cache_write_1h_tokens``
(Anthropic's 1-hour writes),
``reasoning_tokens``, ``first_token_delay`` (seconds between the role-only first chunk and the
first content chunk), ``chunk_delay``, ``model_suffix`` (the dated snapshot appended to the
requested model name in responses, as the APIs do), ``anthropic_service_tier`` (the tier
Anthropic's ``usage.service_tier`` names: ``standard``, ``priority`` or ``batch``; OpenAI
answers the tier asked for), ``request_limit`` and ``token_limit``.
``fail_next(status)`` answers the next request(s) with an error, ``stall_next(seconds)`` delays
them (to provoke client timeouts). ``billed()`` tallies the tokens billed per model and kind.

Per request, ``billed_by_request()`` maps each request id to the tokens of its answer, so a test
can hold one query's record against exactly what its call was charged. The id is the caller's
``X-Client-Request-Id`` header or, without one, the id the server answered with (``x-request-id``
/ ``request-id``, the SDKs' ``_request_id``). An answer enters it once it has been written whole
but for its last byte (so it is there before the client can have read the end):
a stream the client abandons midway is absent, though ``billed()`` keeps the output generated
until then, as a provider bills it. Two whole answers under one id add up.

A prompt containing ``[hold]`` (``HOLD_MARKER``, in any message, input or system text) waits
before its answer, JSON or stream, counted in ``held``, until ``release_held()``: a test keeps
requests in flight for as long as it needs. A released request is answered with the knobs in
force at its release; ``stop()`` releases every held request. ``in_flight`` counts the requests
being answered, held ones included.

Only the standard library is used; the server binds 127.0.0.1 on a free port. It is thread-safe:
every request is answered in its own thread, and many clients (several workers' connection pools)
may connect at once.
"""
from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BILLED_KINDS = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output",
                "reasoning")
HOLD_MARKER = "[hold]"
_ids = itertools.count(1)

_ERRORS = {  # status -> (OpenAI error type, Anthropic error type, Gemini status)
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("invalid_api_key", "authentication_error", "UNAUTHENTICATED"),
    404: ("not_found", "not_found_error", "NOT_FOUND"),
    429: ("rate_limit_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    500: ("server_error", "api_error", "INTERNAL"),
    503: ("server_error", "api_error", "UNAVAILABLE"),
    529: ("server_error", "overloaded_error", "UNAVAILABLE"),
}


_ANTHROPIC_TIERS = ("standard", "priority", "batch")


class LLMTestServer:
    """The OpenAI + Anthropic test server; a context manager (``with``) or start()/stop()."""

    def __init__(self, *, reply: str = "Paris is the capital of France.", cached_tokens: int = 0,
                 cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
                 reasoning_tokens: int = 0, first_token_delay: float = 0.0,
                 chunk_delay: float = 0.0, model_suffix: str | None = "auto",
                 anthropic_service_tier: str = "standard", request_limit: int = 10_000, token_limit: int = 2_000_000,
                 host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self._knobs: dict[str, Any] = {}
        self.configure(reply=reply, cached_tokens=cached_tokens,
                       cache_write_tokens=cache_write_tokens,
                       cache_write_1h_tokens=cache_write_1h_tokens,
                       reasoning_tokens=reasoning_tokens, first_token_delay=first_token_delay,
                       chunk_delay=chunk_delay, model_suffix=model_suffix,
                       anthropic_service_tier=anthropic_service_tier, request_limit=request_limit, token_limit=token_limit)
        self._host, self._port = host, port
        self._failures: list[tuple[int, float]] = []
        self._stalls: list[float] = []
        self._billed: dict[str, dict[str, int]] = {}
        self._billed_by_request: dict[str, dict[str, Any]] = {}
        self._held = 0
        self._in_flight = 0
        self._releases = 0  # bumped by release_held(): the requests held before it go on
        self._released = threading.Condition(self._lock)
        self._stopping = False
        self._requests_used = 0
        self._tokens_used = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: deque[dict] = deque(maxlen=1000)  # the latest request bodies, in order

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> "LLMTestServer":
        handler = type("Handler", (_Handler,), {"server_state": self})
        with self._lock:
            self._stopping = False
        self._httpd = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llm-test-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._released.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LLMTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("LLMTestServer is not running; use it in a `with` block or call start()")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """For ``google.genai.Client(http_options={"base_url": ...})`` (the SDK adds /v1beta)."""
        return self.url

    # --- behaviour -----------------------------------------------------------------------------
    def configure(self, **knobs) -> None:
        """Changes knobs for the following requests (see the module docstring)."""
        for name, value in knobs.items():
            if name.endswith("_tokens") or name.endswith("_limit"):
                if type(value) is not int or value < 0:
                    raise ValueError(f"{name}={value!r} must be a whole number >= 0")
            elif name.endswith("_delay"):
                if not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{name}={value!r} must be seconds >= 0")
            elif name == "anthropic_service_tier":
                if value not in _ANTHROPIC_TIERS:
                    raise ValueError(f"{name}={value!r} must be one of {', '.join(_ANTHROPIC_TIERS)}")
            elif name not in ("reply", "model_suffix"):
                raise ValueError(f"unknown knob {name!r}; known: reply, cached_tokens, "
                                 "cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, "
                                 "first_token_delay, chunk_delay, model_suffix, "
                                 "anthropic_service_tier, request_limit, token_limit")
        with self._lock:
            self._knobs.update(knobs)

    def fail_next(self, status: int = 429, count: int = 1, retry_after: float = 0.0) -> None:
        """Answers the next `count` requests with an HTTP error in the provider's error format."""
        if status not in _ERRORS:
            raise ValueError(f"status={status!r}; the server knows {sorted(_ERRORS)}")
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """Waits `seconds` before answering the next `count` requests (client timeouts)."""
        with self._lock:
            self._stalls.extend([seconds] * count)

    def billed(self) -> dict[str, dict[str, int]]:
        """Tokens billed so far: {model as answered: {kind: tokens, "requests": n}}. ``output``
        includes ``reasoning``, as on a provider's invoice."""
        with self._lock:
            return {model: dict(kinds) for model, kinds in self._billed.items()}

    def billed_by_request(self) -> dict[str, dict[str, Any]]:
        """Whole answers billed so far: {request id: {"model": as answered, kind: tokens}}, the
        kinds of ``billed()``; the id is the caller's ``X-Client-Request-Id`` or the server's."""
        with self._lock:
            return {request_id: dict(entry)
                    for request_id, entry in self._billed_by_request.items()}

    def reset_billing(self) -> None:
        with self._lock:
            self._billed.clear()
            self._billed_by_request.clear()

    @property
    def held(self) -> int:
        """Requests waiting on their ``[hold]`` prompt now."""
        with self._lock:
            return self._held

    @property
    def in_flight(self) -> int:
        """Requests being answered now (held ones included)."""
        with self._lock:
            return self._in_flight

    def release_held(self) -> int:
        """Lets every request held now go on to its answer; returns how many. Requests that
        arrive later with ``[hold]`` wait again."""
        with self._lock:
            released, self._held = self._held, 0
            self._releases += 1
            self._released.notify_all()
            return released

    # --- internals used by the handler ----------------------------------------------------------
    def _plan(self) -> tuple[dict, tuple[int, float] | None, float]:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            stall = self._stalls.pop(0) if self._stalls else 0.0
            return dict(self._knobs), failure, stall

    def _bill(self, model: str, **tokens: int) -> None:
        with self._lock:
            kinds = self._billed.setdefault(model, dict.fromkeys(BILLED_KINDS + ("requests",), 0))
            for kind, count in tokens.items():
                kinds[kind] += count
                if kind != "reasoning":
                    self._tokens_used += count

    def _hold(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._held += 1
            releases = self._releases
            self._released.wait_for(lambda: self._releases != releases or self._stopping)
            if self._releases == releases:  # stopping: nobody released this one
                self._held -= 1

    def _bill_request(self, request_id: str, model: str, tokens: dict[str, int]) -> None:
        with self._lock:
            entry = self._billed_by_request.setdefault(
                request_id, dict.fromkeys(BILLED_KINDS, 0))
            entry["model"] = model
            for kind, count in tokens.items():
                entry[kind] += count

    def _answering(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    def _count_request(self, model: str) -> None:
        with self._lock:
            self._requests_used += 1
            kinds = self._billed.setdefault(model, dict.fromkeys(BILLED_KINDS + ("requests",), 0))
            kinds["requests"] += 1

    def _limits(self, knobs: dict) -> tuple[int, int, int, int]:
        with self._lock:
            return (knobs["request_limit"], max(knobs["request_limit"] - self._requests_used, 0),
                    knobs["token_limit"], max(knobs["token_limit"] - self._tokens_used, 0))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # several workers' connection pools connect at once

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a caller hanging up is no error


def _texts(value: Any):
    """Every string the caller wrote in a request's messages (not roles, types, cache marks)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("role", "type", "cache_control"):
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def _words(value: Any) -> int:
    """Prompt size in "tokens": the words of every string in the request's messages."""
    return sum(len(text.split()) for text in _texts(value))


def _answer_tokens(plan: dict) -> dict[str, int]:
    """What one whole answer bills, by kind (``output`` includes ``reasoning``)."""
    return {"input": plan["input"], "cached_input": plan["cached"],
            "cache_write_5m": plan["write_5m"], "cache_write_1h": plan["write_1h"],
            "output": len(plan["words"]) + plan["reasoning"], "reasoning": plan["reasoning"]}


def _answered_model(model: str, knobs: dict) -> str:
    suffix = knobs["model_suffix"]
    if suffix == "auto" and model.startswith("gemini"):
        return model  # Gemini answers with the model version as asked
    if suffix == "auto":
        suffix = "20241022" if model.startswith("claude") else "2024-07-18"
    if not suffix or model[-8:].isdigit() or model[-10:-6] == "2024":
        return model
    return f"{model}-{suffix}"


class _Handler(BaseHTTPRequestHandler):
    server_state: LLMTestServer
    # Keep-alive, as a provider's API: a busy client reuses its connections instead of opening
    # one per call (thousands of calls would queue on accept). A stream closes its connection.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read results, not access logs
        pass

    def do_POST(self) -> None:
        state = self.server_state
        state._answering(+1)
        try:
            self._answer(state)
        finally:
            state._answering(-1)

    def _answer(self, state: LLMTestServer) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            body = {}
        state.requests.append(body)
        path = self.path.split("?")[0]
        anthropic = path.endswith("/messages")
        gemini = path.endswith(":generateContent") or path.endswith(":streamGenerateContent")
        kind = ("chat" if path.endswith("/chat/completions") else
                "responses" if path.endswith("/responses") else
                "messages" if anthropic else "gemini" if gemini else None)
        if gemini:  # the model is in the path; streaming is the method, not a body field
            body = dict(body, model=path.rsplit("/", 1)[-1].split(":")[0],
                        stream=path.endswith(":streamGenerateContent"))
        prompt = (body.get("input") if kind == "responses" else
                  body.get("contents") if gemini else body.get("messages"))
        system = (body.get("system") if anthropic else
                  body.get("systemInstruction") if gemini else body.get("instructions"))
        if any(HOLD_MARKER in text for text in _texts([prompt, system])):
            state._hold()
        knobs, failure, stall = state._plan()
        if stall:
            time.sleep(stall)
        if kind is None:
            return self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}},
                              {})
        model = _answered_model(str(body.get("model") or "unknown-model"), knobs)
        state._count_request(model)
        headers = self._rate_headers(knobs, "gemini" if gemini else
                                     "anthropic" if anthropic else "openai")
        if failure is not None:
            return self._error(failure, kind, headers)
        request_id = (self.headers.get("X-Client-Request-Id")
                      or headers.get("request-id") or headers["x-request-id"])
        plan = {
            "model": model,
            "words": knobs["reply"].split(),
            "input": max(_words(prompt) + _words(system), 1),
            "cached": knobs["cached_tokens"],
            "write_5m": 0 if gemini else knobs["cache_write_tokens"],
            "write_1h": knobs["cache_write_1h_tokens"] if anthropic else 0,
            "reasoning": knobs["reasoning_tokens"],
            "request_id": request_id,
            # OpenAI says which service tier processed the request: the one asked for, else
            # "default" (what OpenAI answers for its standard tier).
            "service_tier": str(body.get("service_tier") or "default"),
            # Anthropic names the tier in the usage: standard, priority, or batch (a batch result).
            "anthropic_service_tier": knobs["anthropic_service_tier"],
        }
        state._bill(model, input=plan["input"], cached_input=plan["cached"],
                    cache_write_5m=plan["write_5m"], cache_write_1h=plan["write_1h"])
        if body.get("stream"):
            return self._stream(kind, body, plan, knobs, headers, request_id)
        tokens = _answer_tokens(plan)
        state._bill(model, output=tokens["output"], reasoning=tokens["reasoning"])
        self._json(200, _BUILDERS[kind](plan), headers,
                   before_last_byte=lambda: state._bill_request(request_id, model, tokens))

    # --- answers -------------------------------------------------------------------------------
    def _rate_headers(self, knobs: dict, provider: str) -> dict[str, str]:
        req_limit, req_left, tok_limit, tok_left = self.server_state._limits(knobs)
        if provider == "gemini":  # the Gemini API sends no rate-limit headers
            return {"x-request-id": f"gemini_{next(_ids)}"}
        if provider == "anthropic":
            reset = (datetime.now(timezone.utc) + timedelta(seconds=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return {"anthropic-ratelimit-requests-limit": str(req_limit),
                    "anthropic-ratelimit-requests-remaining": str(req_left),
                    "anthropic-ratelimit-requests-reset": reset,
                    "anthropic-ratelimit-tokens-limit": str(tok_limit),
                    "anthropic-ratelimit-tokens-remaining": str(tok_left),
                    "anthropic-ratelimit-tokens-reset": reset,
                    "request-id": f"req_{next(_ids)}"}
        return {"x-ratelimit-limit-requests": str(req_limit),
                "x-ratelimit-remaining-requests": str(req_left),
                "x-ratelimit-reset-requests": "1m30s",
                "x-ratelimit-limit-tokens": str(tok_limit),
                "x-ratelimit-remaining-tokens": str(tok_left),
                "x-ratelimit-reset-tokens": "250ms",
                "x-request-id": f"req_{next(_ids)}"}

    def _json(self, status: int, payload: dict, headers: dict, before_last_byte=None) -> None:
        """`before_last_byte`: called once all but the last byte are written, so that what it
        records is there before the client can have read the whole answer."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if before_last_byte is None:
            self.wfile.write(data)
            return
        self.wfile.write(data[:-1])
        self.wfile.flush()
        before_last_byte()
        self.wfile.write(data[-1:])

    def _error(self, failure: tuple[int, float], kind: str, headers: dict) -> None:
        status, retry_after = failure
        openai_type, anthropic_type, gemini_status = _ERRORS[status]
        message = f"test server answered {status} as asked"
        if kind == "gemini":
            payload = {"error": {"code": status, "message": message, "status": gemini_status}}
        elif kind == "messages":
            payload = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        else:
            payload = {"error": {"message": message, "type": openai_type, "code": openai_type,
                                 "param": None}}
        if status in (429, 503, 529):
            headers = dict(headers, **{"retry-after": str(retry_after)})
        self._json(status, payload, headers)

    def _stream(self, kind: str, body: dict, plan: dict, knobs: dict, headers: dict,
                request_id: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")  # the end of the stream is the end of the body
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        events = list(_STREAMERS[kind](plan, body))
        if kind == "gemini":  # SSE chunks end at a blank line; the last one ends the body
            events = [(delay, None, data, billed) for delay, _, data, billed in events]
        state = self.server_state
        # Billed before it is sent, so a client that has read a chunk finds it in billed():
        # reasoning first (it precedes the visible output), then each chunk's output.
        state._bill(plan["model"], output=plan["reasoning"], reasoning=plan["reasoning"])
        try:
            for number, (delay, event, data, billed_output) in enumerate(events, 1):
                if delay:
                    time.sleep(knobs[delay])
                if billed_output:
                    state._bill(plan["model"], output=billed_output)
                line = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
                if number == len(events):  # in the ledger before the client can read the end
                    self.wfile.write(line.encode()[:-1])
                    self.wfile.flush()
                    state._bill_request(request_id, plan["model"], _answer_tokens(plan))
                    line = "\n"
                self.wfile.write(line.encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away: billed() keeps what was generated, no whole answer


def _chat_usage(plan: dict) -> dict:
    output = len(plan["words"]) + plan["reasoning"]
    prompt = plan["input"] + plan["cached"] + plan["write_5m"]
    return {"prompt_tokens": prompt, "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": plan["cached"], "audio_tokens": 0,
                                      "cache_write_tokens": plan["write_5m"]},
            "completion_tokens_details": {"reasoning_tokens": plan["reasoning"],
                                          "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _responses_usage(plan: dict) -> dict:
    output = len(plan["words"]) + plan["reasoning"]
    total_in = plan["input"] + plan["cached"] + plan["write_5m"]
    return {"input_tokens": total_in, "input_tokens_details": {"cached_tokens": plan["cached"],
                                                               "cache_write_tokens": plan["write_5m"]},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": plan["reasoning"]},
            "total_tokens": total_in + output}


def _anthropic_usage(plan: dict, output: int) -> dict:
    return {"input_tokens": plan["input"], "output_tokens": output,
            "cache_read_input_tokens": plan["cached"],
            "cache_creation_input_tokens": plan["write_5m"] + plan["write_1h"],
            "cache_creation": {"ephemeral_5m_input_tokens": plan["write_5m"],
                               "ephemeral_1h_input_tokens": plan["write_1h"]},
            "service_tier": plan["anthropic_service_tier"],
            "output_tokens_details": {"thinking_tokens": plan["reasoning"]} if plan["reasoning"] else None}


def _chat_completion(plan: dict) -> dict:
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": plan["model"], "system_fingerprint": "fp_test",
            "service_tier": plan["service_tier"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": " ".join(plan["words"]),
                                     "refusal": None}}],
            "usage": _chat_usage(plan)}


def _response(plan: dict, status: str = "completed", with_usage: bool = True) -> dict:
    text = " ".join(plan["words"]) if status == "completed" else ""
    return {"id": plan.setdefault("response_id", f"resp_{next(_ids)}"), "object": "response",
            "created_at": int(time.time()), "model": plan["model"], "status": status,
            "output": [{"type": "message", "id": "msg_out", "status": status, "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]
            if text else [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {},
            "temperature": 1.0, "top_p": 1.0, "service_tier": plan["service_tier"],
            "usage": _responses_usage(plan) if with_usage else None}


def _message(plan: dict) -> dict:
    return {"id": f"msg_{next(_ids)}", "type": "message", "role": "assistant",
            "model": plan["model"], "stop_reason": "end_turn", "stop_sequence": None,
            "content": [{"type": "text", "text": " ".join(plan["words"])}],
            "usage": _anthropic_usage(plan, len(plan["words"]) + plan["reasoning"])}


def _chat_stream(plan: dict, body: dict):
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": plan["model"], "system_fingerprint": "fp_test",
            "service_tier": plan["service_tier"]}
    extra = {"usage": None} if include_usage else {}

    def chunk(delta, finish=None):
        return json.dumps(dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish}], **extra))

    yield None, None, chunk({"role": "assistant", "content": "", "refusal": None}), 0
    for index, word in enumerate(plan["words"]):
        text = word if index == 0 else " " + word
        yield ("first_token_delay" if index == 0 else "chunk_delay"), None, chunk({"content": text}), 1
    yield None, None, chunk({}, "stop"), 0
    if include_usage:
        yield None, None, json.dumps(dict(base, choices=[], usage=_chat_usage(plan))), 0
    yield None, None, "[DONE]", 0


def _responses_stream(plan: dict, body: dict):
    sequence = itertools.count()
    created = _response(plan, "in_progress", with_usage=False)
    yield None, "response.created", json.dumps(
        {"type": "response.created", "response": created, "sequence_number": next(sequence)}), 0
    for index, word in enumerate(plan["words"]):
        text = word if index == 0 else " " + word
        yield ("first_token_delay" if index == 0 else "chunk_delay"), "response.output_text.delta", json.dumps(
            {"type": "response.output_text.delta", "item_id": "msg_out", "output_index": 0,
             "content_index": 0, "delta": text, "logprobs": [],
             "sequence_number": next(sequence)}), 1
    yield None, "response.completed", json.dumps(
        {"type": "response.completed", "response": _response(plan),
         "sequence_number": next(sequence)}), 0


def _messages_stream(plan: dict, body: dict):
    start = dict(_message(plan), content=[], stop_reason=None,
                 usage=_anthropic_usage(plan, 1))
    yield None, "message_start", json.dumps({"type": "message_start", "message": start}), 0
    yield None, "content_block_start", json.dumps(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), 0
    yield None, "ping", json.dumps({"type": "ping"}), 0
    for index, word in enumerate(plan["words"]):
        text = word if index == 0 else " " + word
        yield ("first_token_delay" if index == 0 else "chunk_delay"), "content_block_delta", json.dumps(
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": text}}), 1
    yield None, "content_block_stop", json.dumps({"type": "content_block_stop", "index": 0}), 0
    output = len(plan["words"]) + plan["reasoning"]
    yield None, "message_delta", json.dumps(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": output, **({"output_tokens_details": {"thinking_tokens": plan["reasoning"]}}
                                              if plan["reasoning"] else {})}}), 0
    yield None, "message_stop", json.dumps({"type": "message_stop"}), 0


def _gemini_usage(plan: dict, visible: int, final: bool = True) -> dict:
    """Gemini's usageMetadata: the prompt count includes the cached tokens; the thinking tokens
    are billed as output beside the candidates' (visible) ones."""
    prompt = plan["input"] + plan["cached"]
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": visible,
             "totalTokenCount": prompt + visible + plan["reasoning"],
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if plan["cached"]:
        usage["cachedContentTokenCount"] = plan["cached"]
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan["cached"]}]
    if plan["reasoning"]:
        usage["thoughtsTokenCount"] = plan["reasoning"]
    if not final and not visible:
        del usage["candidatesTokenCount"]
    return usage


def _gemini_chunk(plan: dict, text: str, visible: int, finish: str | None) -> dict:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": _gemini_usage(plan, visible, bool(finish)),
            "modelVersion": plan["model"], "responseId": plan["request_id"]}


def _gemini_content(plan: dict) -> dict:
    return _gemini_chunk(plan, " ".join(plan["words"]), len(plan["words"]), "STOP")


def _gemini_stream(plan: dict, body: dict):
    words = plan["words"]
    for index, word in enumerate(words):
        text = word if index == 0 else " " + word
        last = index == len(words) - 1
        yield ("first_token_delay" if index == 0 else "chunk_delay"), None, json.dumps(
            _gemini_chunk(plan, text, index + 1, "STOP" if last else None)), 1


_BUILDERS = {"chat": _chat_completion, "responses": _response, "messages": _message,
             "gemini": _gemini_content}
_STREAMERS = {"chat": _chat_stream, "responses": _responses_stream, "messages": _messages_stream,
              "gemini": _gemini_stream}
