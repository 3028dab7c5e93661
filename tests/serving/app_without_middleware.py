"""A plain FastAPI app with monitored streaming generators and no ragmon middleware, served by a
real uvicorn in tests/serving/test_abandoned_streams.py: the synchronous stream uses the real
OpenAI client (httpx's connection pool and its lock), as examples/rag_service.py does.

Without the middleware, a stream whose client hung up ends only when the garbage collector
finalizes it; ``/collect`` runs a collection so the test need not wait for one.
"""
from __future__ import annotations

import functools
import gc

from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from openai import AsyncOpenAI, OpenAI
from prometheus_client import REGISTRY, generate_latest
from pydantic import BaseModel

import ragmon

MODEL = "gpt-4o-mini"
app = FastAPI()
# Collections seven times as often as by default (700), as in an application that allocates
# more between requests: the chance that one starts inside the pool lock, tiny per stream, then
# shows within a few hundred abandoned streams instead of thousands.
gc.set_threshold(100)


class Question(BaseModel):
    question: str


@functools.cache
def sync_client() -> OpenAI:
    return ragmon.instrument_openai(OpenAI(max_retries=0))


@functools.cache
def async_client() -> AsyncOpenAI:
    return ragmon.instrument_openai(AsyncOpenAI(max_retries=0))


def messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@ragmon.monitored_query(operation="stream_sync", model=MODEL)
def answer_sync(question: str):
    stream = sync_client().chat.completions.create(
        model=MODEL, messages=messages(question), stream=True,
        stream_options={"include_usage": True})
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    finally:
        stream.close()  # takes the connection pool's lock


@ragmon.monitored_query(operation="stream_async", model=MODEL)
async def answer_async(question: str):
    stream = await async_client().chat.completions.create(
        model=MODEL, messages=messages(question), stream=True,
        stream_options={"include_usage": True})
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    finally:
        await stream.close()


@app.post("/stream-sync")
def stream_sync(body: Question) -> StreamingResponse:
    return StreamingResponse(answer_sync(body.question), media_type="text/plain")


@app.post("/stream-async")
async def stream_async(body: Question) -> StreamingResponse:
    return StreamingResponse(answer_async(body.question), media_type="text/plain")


@app.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type="text/plain; version=0.0.4")


@app.post("/collect")
async def collect() -> dict:
    return {"unreachable": gc.collect()}


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}
