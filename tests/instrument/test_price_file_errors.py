"""A broken price file is found once, at start: servers refuse to start naming it; a library
already running prices at the defaults, counts it once and never raises into the host."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import ragmon
from ragmon.instrument.catalog import RAGMetrics
from ragmon import monitored_query, record_tokens
from ragmon.instrument.performance import PerformanceMonitor
from ragmon.instrument.server import start_metrics_server
from ragmon.settings import ConfigError, check_startup, set_settings
from tests.conftest import ListSink, make_settings

ROOT = Path(__file__).resolve().parents[2]
_opened: list[str] = []
sys.addaudithook(lambda event, args: _opened.append(str(args[0]))
                 if event == "open" and args and "broken_prices" in str(args[0]) else None)


@pytest.fixture
def broken_prices(tmp_path):
    path = tmp_path / "broken_prices.json"
    path.write_text('{"gpt-4o": {"input": "cheap"}')
    return path


def test_check_startup_names_the_file_and_the_problem(broken_prices):
    with pytest.raises(ConfigError, match=r"MODEL_PRICES_FILE=.*broken_prices\.json.*not valid JSON"):
        check_startup(make_settings(MODEL_PRICES_FILE=broken_prices))


def test_a_broken_price_file_is_read_once_counted_once_and_never_raises(broken_prices):
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings(MODEL_PRICES_FILE=broken_prices))
    sink = ListSink()

    @monitored_query("op", model="gpt-4o", metrics=metrics, request_log=sink)
    def query():
        return {"input_tokens": 1000, "output_tokens": 1000}

    _opened.clear()
    for _ in range(50):
        query()
        assert record_tokens(1000, 1000, model="gpt-4o", metrics=metrics) == pytest.approx(0.018)
    assert len(_opened) <= 1  # read on first use only, not per query
    assert all(r["cost"] == pytest.approx(0.018) for r in sink.records)  # the default prices
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "price_file"}) == 1


def test_performance_monitor_end_request_does_not_raise_for_a_broken_price_file(broken_prices):
    settings = make_settings(MODEL_PRICES_FILE=broken_prices)
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)
    sink = ListSink()
    monitor = PerformanceMonitor(metrics=metrics, settings=settings, sink=sink)
    rid = monitor.start_request()
    summary = monitor.end_request(rid, input_tokens=1000, model="gpt-4o")
    assert summary["record_written"] and sink.records[0]["cost"] == pytest.approx(0.003)


def test_the_metrics_server_refuses_to_start_with_a_broken_price_file(broken_prices):
    ragmon.configure(MODEL_PRICES_FILE=str(broken_prices))
    try:
        with pytest.raises(ConfigError, match="broken_prices.json"):
            start_metrics_server(port=0, registry=CollectorRegistry())
    finally:
        set_settings(None)


def run_demo(tmp_path, *args, **env):
    return subprocess.run(
        [sys.executable, str(ROOT / "m2_3_monitoring.py"), "--duration", "0.5", "--port", "0",
         "--quiet", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "REQUEST_LOG_DESTINATION": "none", **env})


def test_the_demo_refuses_to_start_with_a_broken_price_file(tmp_path, broken_prices):
    result = run_demo(tmp_path, "--log-dir", str(tmp_path / "logs"), MODEL_PRICES_FILE=str(broken_prices))
    assert result.returncode == 2, result
    assert "broken_prices.json" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_refuses_an_unwritable_log_dir_without_a_traceback(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_demo(tmp_path, "--log-dir", str(tmp_path / "a_file" / "logs"))
    assert result.returncode == 2, result
    assert "--log-dir" in result.stderr and "Traceback" not in result.stderr
