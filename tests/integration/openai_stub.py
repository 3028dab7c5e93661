"""A local server that speaks OpenAI's chat-completions wire format, for driving the real
`openai` SDK in tests: JSON answers and SSE streams (with the usage chunk when
``stream_options.include_usage`` is set), on 127.0.0.1, port 0.

    with OpenAIStub() as llm:
        client = openai.OpenAI(base_url=llm.openai_base_url, api_key="test")
        ...
        llm.billed_tokens()        # {"input": .., "output": ..} for every completed response

Token counts are deterministic: the prompt costs one token per whitespace-separated word of the
messages, the answer ANSWER_WORDS tokens. A response is billed once it has been written whole;
``billed`` maps the caller's ``X-Client-Request-Id`` header to its tokens.

A prompt containing ``[hold]`` waits, counted in ``held``, until ``release_held()``: a test can
keep requests in flight for as long as it needs.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_WORDS = ("Prometheus", "scrapes", "every", "worker", "through", "one", "merged", "view.")
RATE_LIMIT_REQUESTS = 10_000


class OpenAIStub:
    def __init__(self, stream_chunk_delay: float = 0.002):
        self.stream_chunk_delay = stream_chunk_delay
        self.lock = threading.Lock()
        self.billed: dict[str, dict[str, int]] = {}
        self.requests = 0
        self.held = 0
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "OpenAIStub":
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- what was billed -------------------------------------------------------------------
    def billed_tokens(self) -> dict[str, int]:
        with self.lock:
            return {"input": sum(t["input"] for t in self.billed.values()),
                    "output": sum(t["output"] for t in self.billed.values())}

    def release_held(self) -> None:
        self._release.set()

    def _bill(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.billed[request_id] = {"input": prompt_tokens, "output": completion_tokens}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many workers' connection pools connect at once

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # a caller hanging up is no error


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        stub = self.owner
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        with stub.lock:
            stub.requests += 1
        request_id = self.headers.get("X-Client-Request-Id") or uuid.uuid4().hex
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        if "[hold]" in text:
            with stub.lock:
                stub.held += 1
            stub._release.wait()
        prompt_tokens, completion_tokens = len(text.split()), len(ANSWER_WORDS)
        model = body.get("model", "gpt-4o-mini")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()),
                "model": model}
        if not body.get("stream"):
            self._json(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": " ".join(ANSWER_WORDS)}}]})
            stub._bill(request_id, prompt_tokens, completion_tokens)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self._rate_limit_headers()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = {**base, "object": "chat.completion.chunk"}
        try:
            for i, word in enumerate(ANSWER_WORDS):
                delta = {"content": word if i == 0 else " " + word}
                if i == 0:
                    delta["role"] = "assistant"
                self._event({**chunk, "choices": [{"index": 0, "delta": delta,
                                                   "finish_reason": None}]})
                time.sleep(stub.stream_chunk_delay)
            self._event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if include_usage:
                self._event({**chunk, "choices": [], "usage": usage})
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            return  # the caller went away: nothing delivered whole, nothing billed
        stub._bill(request_id, prompt_tokens, completion_tokens)

    def _rate_limit_headers(self) -> None:
        with self.owner.lock:
            remaining = RATE_LIMIT_REQUESTS - self.owner.requests
        self.send_header("x-ratelimit-remaining-requests", str(remaining))
        self.send_header("x-ratelimit-remaining-tokens", str(remaining * 100))

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self._rate_limit_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, payload: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
