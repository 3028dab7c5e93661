"""examples/rag_service.py under real gunicorn workers with OTEL_ENABLED: each worker exports its
own OTLP stream with its own service.instance.id (made after the fork, with and without
--preload), and the streams add up to what the merged Prometheus /metrics counted."""
from __future__ import annotations

import asyncio

import pytest

from ragmon.testing import LLMTestServer
from ragmon.testing.otlp_receiver import OTLPReceiver
from tests.integration.example_server import ExampleServer, total, wait_for
from tests.integration.test_workers import drive

WORKERS = 2
BATCH = 40


def exported(receiver: OTLPReceiver, name: str) -> dict:
    """{service.instance.id: (process.pid, value)} from each stream's last export of `name`
    (a histogram's count, a counter's sum)."""
    found = {}
    for resource, metric in receiver.metrics():
        if metric.name != name:
            continue
        data = getattr(metric, metric.WhichOneof("data"))
        value = sum(getattr(p, "count", 0) if metric.WhichOneof("data") == "histogram"
                    else (p.as_int or p.as_double) for p in data.data_points)
        found[resource["service.instance.id"]] = (resource["process.pid"], value)
    return found


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_each_worker_exports_its_own_stream(tmp_path, preload):
    with LLMTestServer(cached_tokens=4) as llm, OTLPReceiver() as receiver:
        server = ExampleServer(tmp_path, llm.openai_base_url, workers=WORKERS, preload=preload)
        server.env.update({"OTEL_ENABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                           "OTEL_METRIC_EXPORT_INTERVAL": "300", "PRICE_DATABASE": "none"})
        with server:
            workers = set(server.worker_pids())
            sent = 0
            # Until both workers have answered (the kernel picks which accepts a connection).
            for _ in range(25):
                requests = [{"path": "/ask", "question": f"worker stream {sent + i}",
                             "hang_up": False, "own_id": None} for i in range(BATCH)]
                seen = asyncio.run(drive(server.url, requests, concurrency=16))
                assert all(s["status"] == 200 for s in seen)
                sent += BATCH
                wait_for(lambda: sum(v for _, v in exported(receiver, "rag.query.duration")
                                     .values()) == sent, timeout=60,
                         what="every query exported")
                if len(exported(receiver, "rag.query.duration")) == WORKERS:
                    break
            streams = exported(receiver, "rag.query.duration")
            scrape = server.scrape()
        assert len(streams) == WORKERS, streams
        pids = {pid for pid, _ in streams.values()}
        assert pids == workers, (pids, workers)  # one stream per worker, none from the master
        assert sum(v for _, v in streams.values()) == total(scrape, "rag_queries_total") == sent
        tokens = exported(receiver, "rag.tokens")
        assert sum(v for _, v in tokens.values()) == total(scrape, "rag_tokens_total")
        usage = exported(receiver, "gen_ai.client.operation.duration")
        assert sum(v for _, v in usage.values()) == sent  # one LLM call per query
