"""Streams that clients abandon, in a plain uvicorn app without the ragmon middleware
(tests/serving/app_without_middleware.py, real OpenAI clients against the local LLM server).

Without the middleware, an abandoned synchronous stream ends when the garbage collector finalizes
it, in whichever thread allocates next, possibly while that thread holds httpx's connection-pool
lock inside ``chat.completions.create()``. Closing the application's generator there
(``finally: stream.close()`` needs the same lock) deadlocked that thread, then every thread that
wanted a connection: the server stopped answering streams and its threadpool-served /metrics.
The monitored wrapper hands that closing to a thread of its own, so after hundreds of clients
hang up mid-stream the server still answers, and every query is recorded exactly once.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from ragmon.stack.process import (PidFile, free_port, log_tail, start_process,
                                  stop_process_group)
from ragmon.testing import LLMTestServer
from tests.integration.example_server import parse_samples, total, wait_for

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 500
CONCURRENCY = 32
REPLY = " ".join(["token"] * 200)
OPERATIONS = {"/stream-sync": "stream_sync", "/stream-async": "stream_async"}


@pytest.fixture
def llm():
    # Two hundred words 5 ms apart: clients hang up while their answers are still streaming
    # (on a loaded machine a slow client may still read to the end: recorded success).
    with LLMTestServer(reply=REPLY, chunk_delay=0.005) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path, llm):
    port = free_port()
    env = {**os.environ, "OPENAI_BASE_URL": llm.openai_base_url, "OPENAI_API_KEY": "sk-test-local",
           "REQUEST_LOG_DESTINATION": "file", "LOG_DIR": str(tmp_path / "logs"),
           "LOG_DESTINATION": "none", "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "uvicorn.log"
    pid_file = PidFile(tmp_path / "uvicorn.pid")
    owned = start_process([sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent),
                           "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                           "app_without_middleware:app"], log, pid_file, tmp_path, env=env)
    try:
        def up():
            if not owned.alive():
                raise RuntimeError("uvicorn exited:\n" + log_tail(log, 40))
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            except httpx.TransportError:  # not listening yet
                return False
        wait_for(up, 60, "uvicorn to answer /health")
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "log": log,
               "records": tmp_path / "logs"}
    finally:
        stop_process_group(pid_file, owned, timeout=10)


async def hang_up_mid_stream(port: int, path: str, question: str) -> bool:
    """Sends one streaming request, reads the headers and the first words, then resets the
    connection (SO_LINGER 0) as a client that gives up does. True if it saw the stream start."""
    body = json.dumps({"question": question}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 8:
            try:
                data = await asyncio.wait_for(reader.read(4096), 30)
            except asyncio.TimeoutError:  # the server stopped answering
                return False
            if not data:
                break
            received += data
        return received.startswith(b"HTTP/1.1 200")
    finally:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()


async def abandon(port: int, paths: list[str]) -> list[bool]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int, path: str) -> bool:
        async with gate:
            return await hang_up_mid_stream(port, path, f"question {index} about scrapes")
    return await asyncio.gather(*(one(i, path) for i, path in enumerate(paths)))


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("*_performance.jsonl"))
            for line in path.read_text().splitlines()]


def test_a_server_without_middleware_keeps_answering_after_clients_abandon_streams(server):
    url = server["url"]
    paths = ["/stream-async" if i % 4 == 0 else "/stream-sync" for i in range(STREAMS)]
    started = asyncio.run(abandon(server["port"], paths))
    assert all(started), (f"{started.count(False)} of {STREAMS} streams never started: the "
                          "server stopped answering\n" + log_tail(server["log"], 40))

    # Still answering: /metrics (a threadpool route) and whole new streams of both kinds.
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/metrics").status_code == 200
            for path in ("/stream-sync", "/stream-async") * 4:
                answer = client.post(path, json={"question": "after the hang-ups"})
                assert answer.status_code == 200 and answer.text == REPLY
    except httpx.TimeoutException as stuck:
        pytest.fail(f"the server stopped answering after {STREAMS} abandoned streams: {stuck!r}"
                    "\n" + log_tail(server["log"], 40))

    # Once collected, every query is counted and recorded exactly once, none left in flight.
    sent = {op: sum(1 for p in paths if p == path) + 4 for path, op in OPERATIONS.items()}

    def settled():
        httpx.post(url + "/collect", timeout=30)
        samples = parse_samples(httpx.get(url + "/metrics", timeout=30).text)
        return all(total(samples, "rag_queries_in_flight", operation=op) == 0
                   and total(samples, "rag_queries_total", operation=op) == count
                   for op, count in sent.items()) and len(records(server["records"])) == sum(
                       sent.values())
    wait_for(settled, 60, f"{sum(sent.values())} queries counted and recorded, none in flight")

    samples = parse_samples(httpx.get(url + "/metrics", timeout=30).text)
    found = records(server["records"])
    assert len({r["request_id"] for r in found}) == len(found)
    for op, count in sent.items():
        mine = [r for r in found if r["operation"] == op]
        assert len(mine) == count
        by_status = {status: sum(r["status"] == status for r in mine) for status in
                     ("cancelled", "success")}
        assert sum(by_status.values()) == count, (op, by_status)
        assert by_status["cancelled"] >= 1 and by_status["success"] >= 4, (op, by_status)
        for status, recorded in by_status.items():
            assert total(samples, "rag_queries_total", operation=op, status=status) == recorded
    assert "Exception ignored" not in server["log"].read_text(errors="replace")
