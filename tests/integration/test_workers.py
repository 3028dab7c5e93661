"""examples/rag_service.py under real multi-worker servers, as docs/production.md runs it.

gunicorn with 4 uvicorn workers (with and without --preload) answers 2,000 requests (JSON,
async and sync streams, some clients hanging up after the first chunk). Every scrape, whichever
worker answers it (and the master's own /metrics), reports exactly 2,000 queries; in-flight
returns to 0; there are 2,000 whole records with unique request ids, each the X-Request-ID its
client got back; tokens and spend agree with the records and with what the LLM server billed.

Then a worker is killed with SIGKILL while it holds requests and the test states what survives:
its finished work stays counted (its files are merged into the archive), its in-flight count
goes at once (child_exit), and the requests it was serving leave no record and no count, their
clients get a broken connection, and the other workers' requests finish normally.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from ragmon.instrument.pricing import PriceTable
from ragmon.stack.process import log_tail
from ragmon.settings import make_settings
from ragmon.testing import LLMTestServer
from ragmon.testing.llm_server import BILLED_KINDS, HOLD_MARKER
from tests.conftest import require_binaries
from tests.integration.example_server import ExampleServer, total, wait_for

REQUESTS = 2000
CONCURRENCY = 32
HELD = 24
ROUTES = {"/ask": "ask", "/ask/stream": "ask_stream", "/ask/stream-sync": "ask_stream_sync"}


@pytest.fixture
def llm():
    # Eight words a few milliseconds apart keep a stream open long enough for a client hanging
    # up to be caught mid-stream; cached prompt tokens make a second kind travel through workers.
    with LLMTestServer(reply="Prometheus scrapes every worker through one merged view.",
                       chunk_delay=0.002, cached_tokens=4) as server:
        yield server


def plan(count: int) -> list[dict]:
    """Half JSON, a quarter each stream kind; one stream in five hangs up after its first
    chunk; one request in ten brings its own X-Request-ID."""
    requests = []
    for i in range(count):
        path = ("/ask", "/ask", "/ask/stream", "/ask/stream-sync")[i % 4]
        requests.append({
            "path": path, "question": f"how does prometheus merge worker {i} metrics",
            "hang_up": path != "/ask" and i % 5 == 2,
            "own_id": f"client-{i}" if i % 10 == 3 else None})
    return requests


async def drive(url: str, requests: list[dict], concurrency: int = CONCURRENCY) -> list[dict]:
    """Sends every request; returns what each client saw (request id, complete or not)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one(request: dict) -> dict:
            headers = {"X-Request-ID": request["own_id"]} if request["own_id"] else {}
            async with gate:
                try:
                    async with client.stream("POST", request["path"], headers=headers,
                                             json={"question": request["question"]}) as response:
                        seen = {**request, "status": response.status_code,
                                "request_id": response.headers.get("x-request-id")}
                        async for _chunk in response.aiter_raw():
                            if request["hang_up"]:
                                return {**seen, "complete": False}  # closes the connection
                        return {**seen, "complete": True}
                except httpx.TransportError as exc:
                    return {**request, "status": None, "request_id": None, "complete": False,
                            "error": type(exc).__name__}
        return await asyncio.gather(*(one(request) for request in requests))


def prices():
    return PriceTable.from_settings(make_settings())


def expected_cost(table: PriceTable, model: str, tokens: dict) -> float:
    price, _known = table.lookup(model)
    return table.cost(price, tokens["input"], tokens["output"], tokens["cached_input"])


def in_flight_by_worker(server: ExampleServer) -> dict[int, float]:
    """Each live worker's own in-flight count, read from its file (the merged gauge sums them)."""
    out = {}
    for path in server.multiproc_dir.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        out[pid] = sum(value for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(
            str(path)) if json.loads(key)[0] == "rag_queries_in_flight")
    return out


def wait_until_settled(server: ExampleServer, queries: int) -> None:
    """Waits until no query is in flight and `queries` are counted and recorded. A stream whose
    client hung up ends on the server a moment later (at its next chunk), and a query leaves
    in-flight just before it is counted, then recorded: a scrape in between sees neither."""
    def settled():
        samples = server.scrape()
        return (total(samples, "rag_queries_in_flight") == 0
                and total(samples, "rag_queries_total") == queries
                and len(server.records()) == queries)
    wait_for(settled, 90, f"in-flight 0 and {queries} queries counted and recorded")


def check_load(server: ExampleServer, llm: LLMTestServer, seen: list[dict], queries: int) -> None:
    # The merged exposition passes promtool as the single-process one does.
    [promtool] = require_binaries("promtool")
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read()
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert lint.returncode == 0 and lint.stdout == lint.stderr == b"", lint
    failed = Counter((s["path"], s["hang_up"], s.get("error")) for s in seen if s["status"] != 200)
    assert not failed, (failed, log_tail(server.server_log, 60))
    # Once settled, several scrapes, answered by whichever worker accepts them, and the master's
    # endpoint, all report every query.
    wait_until_settled(server, queries)
    for _ in range(6):
        assert total(server.scrape(), "rag_queries_total") == queries
    if server.server == "gunicorn":
        master = server.scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
        assert total(master, "rag_queries_total") == queries

    records = server.records()
    ids = [r["request_id"] for r in records]
    assert len(records) == queries and len(set(ids)) == queries
    assert set(ids) == {s["request_id"] for s in seen}  # each client's X-Request-ID, recorded
    for s in seen:
        if s["own_id"]:
            assert s["request_id"] == s["own_id"]
    by_id = {r["request_id"]: r for r in records}
    for s in seen:
        record = by_id[s["request_id"]]
        assert record["operation"] == ROUTES[s["path"]]
        if s["complete"]:
            assert record["status"] == "success"
        else:  # hung up: cancelled, unless the stream had already ended on the server
            assert record["status"] in ("cancelled", "success")

    samples = server.scrape()
    by_status = Counter(r["status"] for r in records)
    assert by_status["cancelled"] >= 1  # ~200 clients hung up mid-stream; most are caught there
    for status, count in by_status.items():
        assert total(samples, "rag_queries_total", status=status) == count
    for path, operation in ROUTES.items():
        sent = sum(1 for s in seen if s["path"] == path)
        assert total(samples, "rag_http_requests_total", route=path, status_class="2xx") == sent
        assert total(samples, "rag_queries_total", operation=operation) == sent

    # Tokens: every finished query carries exactly what the LLM server billed for its answer
    # (keyed by the X-Client-Request-Id the service sends), by kind, under the answering model.
    table = prices()
    billed = llm.billed_by_request()
    for record in records:
        if record["status"] == "success":
            answer = billed[record["request_id"]]
            assert record["model"] == answer["model"]
            assert {kind: record["tokens"].get(kind, 0) for kind in BILLED_KINDS} == {
                kind: answer[kind] for kind in BILLED_KINDS}
            assert record["tokens"]["cached_input"] == 4
            assert record["cost"] == pytest.approx(
                expected_cost(table, record["model"], record["tokens"]), rel=1e-9)
    for kind in ("input", "output", "cached_input"):
        assert total(samples, "rag_tokens_total", token_type=kind) == sum(
            r["tokens"][kind] for r in records)
    assert total(samples, "rag_spend_dollars_total") == pytest.approx(
        sum(r["cost"] or 0 for r in records), rel=1e-9)


def kill_a_worker_holding_requests(server: ExampleServer, llm: LLMTestServer, queries: int) -> None:
    held = [{"path": "/ask", "question": f"{HOLD_MARKER} question {i}", "hang_up": False,
             "own_id": None} for i in range(HELD)]

    async def scenario():
        clients = asyncio.ensure_future(drive(server.url, held, concurrency=HELD))
        await asyncio.to_thread(wait_for, lambda: llm.held == HELD, 60, "held requests")
        assert total(server.scrape(), "rag_queries_in_flight") == HELD
        per_worker = in_flight_by_worker(server)
        victim, serving = max(per_worker.items(), key=lambda item: item[1])
        assert serving >= 1 and victim in server.worker_pids()
        booted = server.booted_workers()
        os.kill(victim, signal.SIGKILL)

        def replaced():
            pids = server.worker_pids()
            return (victim not in pids and len(pids) == server.workers
                    and server.booted_workers() > booted)
        await asyncio.to_thread(wait_for, replaced, 90, "a replacement worker")
        # The victim's in-flight count went with it; everything it finished stays counted.
        after = server.scrape()
        assert total(after, "rag_queries_in_flight") == HELD - serving
        assert total(after, "rag_queries_total") == queries
        if server.server == "gunicorn":  # child_exit merged its files into the archive
            assert not list(server.multiproc_dir.glob(f"*_{victim}.db"))
            assert (server.multiproc_dir / "counter_archive.db").exists()
        assert llm.release_held() == HELD
        return await clients, int(serving)

    seen, lost = asyncio.run(scenario())
    survived = [s for s in seen if s["complete"]]
    broken = [s for s in seen if not s["complete"]]
    assert len(broken) == lost and len(survived) == HELD - lost
    assert all(s["status"] is None for s in broken)  # the connection died with the worker
    wait_until_settled(server, queries + len(survived))
    records = server.records()
    assert len(records) == queries + len(survived)
    assert {s["request_id"] for s in survived} <= {r["request_id"] for r in records}


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_with_uvicorn_workers_reports_exact_totals(tmp_path: Path, llm, preload):
    with ExampleServer(tmp_path, llm.openai_base_url, preload=preload) as server:
        seen = asyncio.run(drive(server.url, plan(REQUESTS)))
        assert sum(1 for s in seen if s["hang_up"]) >= REQUESTS // 10
        check_load(server, llm, seen, REQUESTS)
        kill_a_worker_holding_requests(server, llm, REQUESTS)


def test_uvicorn_workers_report_exact_totals_and_drop_a_killed_worker(tmp_path: Path, llm):
    with ExampleServer(tmp_path, llm.openai_base_url, server="uvicorn") as server:
        seen = asyncio.run(drive(server.url, plan(REQUESTS // 4)))
        check_load(server, llm, seen, REQUESTS // 4)
        kill_a_worker_holding_requests(server, llm, REQUESTS // 4)


def test_a_metrics_port_taken_by_another_process_never_stops_a_worker(tmp_path: Path, llm):
    """Every worker calls start_metrics_server() at import; the master already serves the port."""
    with ExampleServer(tmp_path, llm.openai_base_url,
                       app="tests.integration.app_starting_its_own_metrics_server:app") as server:
        assert len(server.worker_pids()) == server.workers  # all booted
        for _ in range(8):
            assert httpx.get(server.url + "/echo", timeout=10).json() == {"text": "ok"}
        merged = server.scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
        assert total(merged, "rag_queries_total", operation="echo") == 8
        assert total(merged, "rag_instrumentation_errors_total",
                     reason="metrics_port_in_use") == server.workers
    assert "port %d on 127.0.0.1 is already in use" % server.metrics_port in \
        server.server_log.read_text()
