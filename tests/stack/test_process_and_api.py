"""The stack's one process manager (ragmon/stack/process.py) and one HTTP client
(ragmon/stack/api.py), without the daemons: real child processes, a real closed port."""
from __future__ import annotations

import sys

import pandas as pd
import psutil
import pytest

from ragmon.stack.api import AlertmanagerAPI, APIError, PrometheusAPI, http_ok
from ragmon.stack.process import OwnedProcess, Processes, free_port, spawn, wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_wait_until_returns_the_first_truthy_result():
    answers = iter([None, [], {"ok": 1}])
    assert wait_until(lambda: next(answers), 5, interval=0.01) == {"ok": 1}


def test_wait_until_raises_naming_what_never_happened_and_the_last_result():
    with pytest.raises(TimeoutError, match=r"waited 0.05 s for the answer; the last check returned \[\]"):
        wait_until(lambda: [], 0.05, what="the answer", interval=0.01)


def test_wait_until_treats_an_empty_table_as_not_yet():
    frames = iter([pd.DataFrame(), pd.DataFrame({"value": [1.0]})])
    assert len(wait_until(lambda: next(frames), 5, interval=0.01)) == 1


def test_wait_until_retries_only_the_exceptions_it_is_told_to():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")  # an OSError: retried by default
        return "up"
    assert wait_until(flaky, 5, interval=0.01) == "up"

    def dead():
        raise RuntimeError("the process exited")
    with pytest.raises(RuntimeError, match="exited"):
        wait_until(dead, 5, interval=0.01)
    with pytest.raises(TimeoutError, match="APIError"):
        wait_until(lambda: (_ for _ in ()).throw(APIError("loading")), 0.05, interval=0.01,
                   retry_on=(APIError,))


def test_an_owned_process_is_stopped_by_pid_and_reaped(tmp_path):
    owned = spawn("sleeper", SLEEPER, tmp_path / "sleeper.log")
    assert owned.alive() and owned.process().pid == owned.pid
    assert owned.stop(5) is not None
    assert not owned.alive() and owned.popen.poll() is not None


def test_an_owned_process_never_signals_a_reused_pid():
    me = psutil.Process()
    stale = OwnedProcess("stale", me.pid, me.create_time() - 100)
    assert stale.process() is None and stale.stop(1) is None and me.is_running()


def test_the_registry_stops_everything_it_started_and_refuses_strangers(tmp_path):
    with Processes(handle_signals=False) as processes:
        first = processes.start("one", SLEEPER, log_path=tmp_path / "one.log")
        processes.start("two", SLEEPER, log_path=tmp_path / "two.log")
        cleaned = []
        processes.on_cleanup("note", lambda: cleaned.append(True))
        assert sorted(r["name"] for r in processes.rows() if r["alive"]) == ["one", "two"]
        processes.stop(first)
        assert first.pid not in processes.alive()
        with pytest.raises(ValueError, match="was not started or adopted by this registry"):
            processes.stop(1)
    assert processes.alive() == [] and cleaned == [True]
    assert processes.stop_all() == []  # idempotent


def test_clients_refuse_a_url_that_is_not_http():
    with pytest.raises(ValueError, match="is not an http"):
        PrometheusAPI("127.0.0.1:9090")
    with pytest.raises(ValueError, match="is not an http"):
        AlertmanagerAPI("localhost:9093")


def test_an_engine_that_is_not_there_is_an_api_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(APIError, match=f"{url}/api/v1/query cannot be reached"):
        PrometheusAPI(url, timeout=2).query("up")
    with pytest.raises(APIError, match=f"{url}/api/v2/alerts cannot be reached"):
        AlertmanagerAPI(url, timeout=2).alerts()
    assert not http_ok(url + "/-/ready") and not PrometheusAPI(url).ready()
