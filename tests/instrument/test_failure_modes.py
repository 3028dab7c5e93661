"""Failure modes around the edges: hostile __str__, a full disk under the logger, the webhook
receiver's limits, misspelled .env keys, the export's temporary file, component log modes."""
import http.client
import json
import logging
import os

from prometheus_client import CollectorRegistry

from ragmon.instrument.catalog import RAGMetrics
from ragmon import track_rate_limit
from ragmon.instrument.jsonlog import StructuredLogger
from ragmon.instrument.performance import PerformanceMonitor
from ragmon.report.cli import export_records
from ragmon.settings import load_settings
from ragmon.stack.webhook import MAX_BODY_BYTES, WebhookReceiver
from tests.conftest import ListSink, make_settings


class StrRaises:
    def __str__(self):
        raise RuntimeError("__str__ fails")

    __repr__ = __str__


class ErrorWithBadStr(Exception):
    def __str__(self):
        raise RuntimeError("__str__ fails")


def test_log_error_survives_an_exception_whose_str_raises(tmp_path):
    logger = StructuredLogger("svc", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=tmp_path))
    try:
        raise ErrorWithBadStr()
    except ErrorWithBadStr as exc:
        logger.log_error(exc, context={"thing": StrRaises()})
    line = json.loads((tmp_path / "app.jsonl").read_text())
    assert line["fields"]["error_type"] == "ErrorWithBadStr"
    assert "unprintable" in line["fields"]["message"]


def test_rate_limit_headers_whose_str_raises_are_counted_not_raised():
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings())
    found = track_rate_limit("openai", headers={StrRaises(): "1", "x-ratelimit-remaining-tokens": StrRaises(),
                                                "x-ratelimit-remaining-requests": "7"}, metrics=metrics)
    assert found == {"requests": 7.0}
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "bad_header"}) >= 1


def test_end_request_takes_an_error_type_whose_str_raises():
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings())
    sink = ListSink()
    monitor = PerformanceMonitor(metrics=metrics, settings=make_settings(), sink=sink)
    rid = monitor.start_request()
    summary = monitor.end_request(rid, error_type=StrRaises())
    assert summary["record_written"] and "unprintable" in sink.records[0]["error_type"]


def test_a_full_disk_under_the_logger_prints_no_traceback_and_is_counted(tmpfs, capfd):  # noqa: F811
    log_dir = tmpfs("16k")
    (log_dir / "filler").write_bytes(b"f" * 12_000)
    logger = StructuredLogger("svc", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=log_dir))
    for n in range(200):
        logger.info("event", padding="p" * 200, n=n)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    handler = logger._logger.handlers[0]
    assert handler.lost > 0
    (log_dir / "filler").unlink()
    logger.info("after", n=-1)
    lines = (log_dir / "app.jsonl").read_bytes().split(b"\n")
    assert json.loads([line for line in lines if line][-1])["event"] == "after"


def post(url: str, body: bytes, length: int | None = None) -> int:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/alerts")
    conn.putheader("Content-Length", str(len(body) if length is None else length))
    conn.endheaders()
    conn.send(body[:MAX_BODY_BYTES])
    status = conn.getresponse().status
    conn.close()
    return status


def test_the_webhook_receiver_refuses_huge_and_malformed_payloads_and_wait_for_survives():
    with WebhookReceiver() as hook:
        assert post(hook.url, b"x", length=MAX_BODY_BYTES + 1) == 413
        for bad in (b'"a string"', b'{"alerts": "nope"}', b'{"alerts": [1, 2]}',
                    b'{"alerts": [{"labels": "x"}]}', b"not json"):
            assert post(hook.url, bad) == 400, bad
        good = {"alerts": [{"labels": {"alertname": "RagX"}, "status": "firing"}]}
        assert post(hook.url, json.dumps(good).encode()) == 200
        found = hook.wait_for(lambda a: a["labels"]["alertname"] == "RagX", timeout=5)
        assert found is not None and len(hook.notifications) == 1


def test_a_misspelled_dotenv_key_is_warned_about(tmp_path, caplog):
    env = tmp_path / ".env"
    env.write_text("METRIC_PORT=9400\nMY_APP_SETTING=1\n")
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        settings = load_settings({}, dotenv_path=env)
    assert settings.METRICS_PORT == 8000
    messages = [r.getMessage() for r in caplog.records]
    assert any("METRIC_PORT" in m and "did you mean METRICS_PORT" in m for m in messages)
    assert not any("MY_APP_SETTING" in m for m in messages)


def test_export_does_not_follow_a_symlink_planted_at_a_temporary_name(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # every name the old scheme could pick (any pid) cannot be planted; plant the likely ones
    for pid in {os.getpid(), os.getpid() + 1}:
        (out_dir / f".export.json.{pid}.tmp").symlink_to(victim)
    export_records(out_dir / "export.json", log_dir)
    assert victim.read_text() == "precious"
    assert json.loads((out_dir / "export.json").read_text())["count"] == 0


def test_component_logs_are_readable_by_their_owner_only(tmp_path):
    from ragmon.stack.process import PidFile, start_process
    log = tmp_path / "logs" / "thing.log"
    owned = start_process(["/bin/true"], log, PidFile(tmp_path / "thing.pid"), tmp_path)
    owned.popen.wait(timeout=30)
    assert log.stat().st_mode & 0o777 == 0o600
