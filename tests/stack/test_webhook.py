"""The Alertmanager webhook receiver: what it keeps, and the memory a flood can take."""
import gc
import http.client
import json
import tracemalloc

import pytest

from ragmon.stack.webhook import MAX_BODY_BYTES, WebhookReceiver, size_of


def post(url: str, body: bytes) -> int:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/alerts", body=body)
        return conn.getresponse().status
    finally:
        conn.close()


def big_notification(n: int) -> bytes:
    """A valid notification of almost MAX_BODY_BYTES: one alert with a huge annotation."""
    alert = {"labels": {"alertname": f"RagFlood{n}"}, "status": "firing",
             "annotations": {"description": "x" * (MAX_BODY_BYTES - 200)}}
    return json.dumps({"alerts": [alert]}).encode()


def test_a_flood_of_large_notifications_keeps_memory_within_the_bound():
    limit = 4_000_000
    gc.collect()
    tracemalloc.start()
    try:
        with WebhookReceiver(max_kept_bytes=limit) as hook:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(40):  # about 40 MB posted
                assert post(hook.url, big_notification(n)) == 200
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            assert hook.kept_bytes <= limit
            assert len(hook.notifications) == 3 and hook.dropped == 37
            assert hook.notifications[-1]["alerts"][0]["labels"]["alertname"] == "RagFlood39"
            assert grown < limit + 2_000_000, grown  # without the bound: about 40 MB
            assert hook.wait_for(lambda a: a["labels"]["alertname"] == "RagFlood39", timeout=5)
    finally:
        tracemalloc.stop()


def test_a_body_nested_beyond_parsing_is_refused_and_the_receiver_keeps_serving():
    with WebhookReceiver() as hook:
        assert post(hook.url, b"[" * 200_000 + b"]" * 200_000) == 400
        assert post(hook.url, json.dumps({"alerts": [{"labels": {"alertname": "RagX"}}]}).encode()) == 200
        assert len(hook.notifications) == 1


def test_size_of_counts_every_object_of_a_parsed_body():
    small, large = json.loads('{"alerts": []}'), json.loads('{"alerts": [{"labels": {"a": "' + "x" * 10_000 + '"}}]}')
    assert size_of(large) > size_of(small) + 10_000


def test_the_bound_must_be_a_positive_number_of_bytes():
    with pytest.raises(ValueError, match="max_kept_bytes=0"):
        WebhookReceiver(max_kept_bytes=0)
