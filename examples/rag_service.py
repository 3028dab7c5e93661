"""A small RAG service, monitored: FastAPI, the real `openai` SDK instrumented by ragmon, one
JSON and two streaming endpoints, the ragmon middleware and /metrics. Run it under gunicorn with 4 uvicorn workers:

    gunicorn -c examples/gunicorn.conf.py --chdir examples rag_service:app

or alone:  uvicorn --app-dir examples rag_service:app

The OpenAI client reads OPENAI_API_KEY and OPENAI_BASE_URL (any server that speaks the
chat-completions format works; the tests use a local one). Records go where ragmon's settings
say (REQUEST_LOG_DESTINATION, LOG_DIR); see docs/production.md.
"""
from __future__ import annotations

import functools
import os
import re

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

import ragmon
from ragmon.serving.asgi import RAGMonitoringMiddleware

MODEL = os.environ.get("RAG_MODEL", "gpt-4o-mini")
DOCUMENTS = (
    "Prometheus scrapes /metrics and stores every series with its labels.",
    "Gunicorn runs several worker processes; each one counts its own requests.",
    "PROMETHEUS_MULTIPROC_DIR holds one file per worker so /metrics can add them up.",
    "A request id ties a response header, a log line and a request record together.",
    "Streaming answers send the first words early; time to first token measures that.",
)

app = FastAPI(title="rag-service")
app.add_middleware(RAGMonitoringMiddleware)


class Question(BaseModel):
    question: str


# One client per worker process, made on first use (after the fork, key checked then).
# instrument_openai times each call as the "generation" stage and records its usage (tokens by
# kind, priced by the model that answered), rate-limit headers and SDK errors.
@functools.cache
def async_client() -> AsyncOpenAI:
    return ragmon.instrument_openai(AsyncOpenAI(max_retries=0))


@functools.cache
def sync_client() -> OpenAI:
    return ragmon.instrument_openai(OpenAI(max_retries=0))


def retrieve(question: str, k: int = 2) -> list[str]:
    words = set(re.findall(r"\w+", question.lower()))
    ranked = sorted(DOCUMENTS, key=lambda doc: -len(words & set(re.findall(r"\w+", doc.lower()))))
    return ranked[:k]


def messages_for(question: str, documents: list[str]) -> list[dict]:
    context = "\n".join(documents)
    return [{"role": "system", "content": f"Answer from this context only:\n{context}"},
            {"role": "user", "content": question}]


def correlation() -> dict:
    """The request id travels to the provider too, so both sides can find one request."""
    return {"X-Client-Request-Id": ragmon.current_request_id()}


@ragmon.monitored_query(operation="ask", model=MODEL)
async def answer(question: str) -> str:
    with ragmon.stage("retrieval"):
        documents = retrieve(question)
    completion = await async_client().chat.completions.create(
        model=MODEL, messages=messages_for(question, documents), extra_headers=correlation())
    return completion.choices[0].message.content


@ragmon.monitored_query(operation="ask_stream", model=MODEL)
async def stream_answer(question: str):
    with ragmon.stage("retrieval"):
        documents = retrieve(question)
    stream = await async_client().chat.completions.create(
        model=MODEL, messages=messages_for(question, documents), stream=True,
        stream_options={"include_usage": True}, extra_headers=correlation())
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    finally:
        await stream.close()  # an abandoned answer stops the generation upstream at once


@ragmon.monitored_query(operation="ask_stream_sync", model=MODEL)
def stream_answer_sync(question: str):
    """The same with the synchronous client: Starlette runs each step in a thread."""
    documents = retrieve(question)
    stream = sync_client().chat.completions.create(
        model=MODEL, messages=messages_for(question, documents), stream=True,
        stream_options={"include_usage": True}, extra_headers=correlation())
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    finally:
        stream.close()


@app.post("/ask")
async def ask(body: Question) -> dict:
    return {"answer": await answer(body.question), "request_id": ragmon.current_request_id()}


@app.post("/ask/stream")
async def ask_stream(body: Question) -> StreamingResponse:
    return StreamingResponse(stream_answer(body.question), media_type="text/plain")


@app.post("/ask/stream-sync")
def ask_stream_sync(body: Question) -> StreamingResponse:
    return StreamingResponse(stream_answer_sync(body.question), media_type="text/plain")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}
