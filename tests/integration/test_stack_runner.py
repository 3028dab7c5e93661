"""m2_3_stack.py with the real daemons: up/status/down from separate processes, stopping by PID,
and the errors a user meets (missing binary, port taken, a second stack in the same place)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import psutil
import pytest

from m2_3_stack import INSTALL_COMMAND, Stack, StackError
from ragmon.stack.api import http_ok
from ragmon.stack.process import COMPONENTS, PidFile, wait_until
from tests.conftest import require_binaries
from tests.stack_promql import WORKSPACE

REQUIRED = ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")


@pytest.fixture(autouse=True)
def binaries_installed():
    require_binaries(*REQUIRED)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKSPACE / "m2_3_stack.py"), *args], cwd=WORKSPACE,
                          capture_output=True, text=True, timeout=timeout)


def free_ports_args() -> list[str]:
    return ["--prometheus-port", "0", "--alertmanager-port", "0", "--pushgateway-port", "0",
            "--node-exporter-port", "0"]


def test_cli_up_status_down_from_separate_processes(tmp_path, settings):
    workdir = tmp_path / "stack"
    try:
        up = cli("up", "--workdir", str(workdir), "--fast", "--app-target", "127.0.0.1:9", *free_ports_args())
        assert up.returncode == 0, up.stdout + up.stderr
        urls = json.loads((workdir / "run" / "stack.json").read_text())["urls"]
        for name in ("prometheus", "alertmanager", "pushgateway"):
            assert urls[name] in up.stdout, f"up must print the {name} URL"
            assert http_ok(urls[name] + "/-/ready")
        pids = {c.name: PidFile(workdir / "run" / f"{c.name}.pid").process() for c in COMPONENTS}
        assert all(pids[name] is not None for name in ("prometheus", "alertmanager", "pushgateway"))
        # the daemons outlive the `up` process and run on the rendered copies in the workdir
        prometheus_cmd = " ".join(pids["prometheus"].cmdline())
        assert str(workdir / "config" / "prometheus.yml") in prometheus_cmd
        assert "--cluster.listen-address=" in pids["alertmanager"].cmdline()

        status = cli("status", "--workdir", str(workdir))
        assert status.returncode == 0 and status.stdout.count("running") >= 3, status.stdout

        down = cli("down", "--workdir", str(workdir))
        assert down.returncode == 0 and "stopped prometheus, alertmanager, pushgateway" in down.stdout
        for name, process in pids.items():
            if process is not None:
                assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, name
        status = cli("status", "--workdir", str(workdir))
        assert status.returncode == 3 and "running" not in status.stdout
        assert cli("down", "--workdir", str(workdir)).stdout.strip() == "nothing was running"
    finally:
        Stack(workdir, settings=settings).down()  # whatever the assertions above left running


def test_api_up_is_idempotent_and_refuses_a_different_stack_in_the_same_place(tmp_path, settings):
    ports = {"prometheus": 0, "alertmanager": 0, "pushgateway": 0, "node_exporter": 0}
    stack = Stack(tmp_path, app_targets=["127.0.0.1:9"], fast=True, ports=ports, settings=settings)
    try:
        with stack:
            urls = stack.urls
            assert set(urls) >= {"prometheus", "alertmanager", "pushgateway"}
            assert stack.up().urls == urls  # the same stack again: nothing restarted
            other = Stack(tmp_path, app_targets=["127.0.0.1:10"], fast=True, ports=ports, settings=settings)
            with pytest.raises(StackError, match="already running"):
                other.up()
            # Prometheus answers through the helper once it has scraped itself (1 s in fast mode)
            assert wait_until(lambda: stack.query('up{job="prometheus"}'), timeout=30)
            with pytest.raises(StackError, match="parse error"):
                stack.query("sum(")
        assert not any(stack.status().values())
        assert stack.urls == {}
    finally:
        stack.down()


def test_missing_binary_names_the_install_command(tmp_path, settings):
    empty = tmp_path / "bin"
    empty.mkdir()
    stack = Stack(tmp_path / "stack", settings=settings, search_path=str(empty))
    with pytest.raises(StackError) as error:
        stack.up()
    assert INSTALL_COMMAND in str(error.value)
    assert "prometheus" in str(error.value)
    assert not any(stack.status().values())


def test_cli_missing_binary_exits_with_the_install_command(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, str(WORKSPACE / "m2_3_stack.py"), "up", "--workdir",
                             str(tmp_path / "s"), *free_ports_args()], cwd=WORKSPACE, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "sudo apt-get install prometheus prometheus-alertmanager prometheus-pushgateway " \
           "prometheus-node-exporter" in result.stderr


def test_a_port_in_use_is_refused_with_the_setting_to_change(tmp_path, settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(tmp_path, settings=settings, ports={"prometheus": port, "alertmanager": 0,
                                                          "pushgateway": 0, "node_exporter": 0})
        with pytest.raises(StackError) as error:
            stack.up()
    message = str(error.value)
    assert f"port {port}" in message and "PROMETHEUS_PORT" in message and "--prometheus-port" in message
    assert not any(stack.status().values())


@pytest.mark.parametrize("ports, expected", [
    ({"grafana": 3000}, "unknown key"), ({"prometheus": 70000}, "is not a TCP port"),
    ({"prometheus": "9090"}, "is not a TCP port"),
])
def test_bad_ports_are_refused(tmp_path, settings, ports, expected):
    with pytest.raises(ValueError, match=expected):
        Stack(tmp_path, settings=settings, ports=ports)


def test_cli_webhook_prints_the_alerts_it_receives(tmp_path):
    from ragmon.stack.process import free_port, wait_until
    port, out = free_port(), tmp_path / "webhook.out"
    with open(out, "wb") as handle:
        process = subprocess.Popen([sys.executable, str(WORKSPACE / "m2_3_stack.py"), "webhook",
                                    "--port", str(port)], cwd=WORKSPACE, stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "Receiving alerts" in out.read_text(), timeout=30), out.read_text()
        payload = {"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "labels": {"alertname": "RagHighErrorRate", "severity": "critical",
                                           "job": "rag-service"},
            "annotations": {"summary": "More than 5% of queries fail on rag-service"}}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", method="POST",
                                         data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=5).status == 200
        assert wait_until(lambda: "RagHighErrorRate" in out.read_text(), timeout=30)
        assert ("FIRING   RagHighErrorRate severity=critical job=rag-service: More than 5% of "
                "queries fail on rag-service") in out.read_text()
    finally:
        process.terminate()
        try:
            code = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    assert code == 0, "SIGTERM must stop the webhook receiver cleanly"


def test_a_daemon_that_dies_at_start_is_reported_and_the_others_are_stopped(tmp_path, settings):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("prometheus-alertmanager", "prometheus-pushgateway"):
        (bin_dir / name).symlink_to(shutil.which(name))
    broken = bin_dir / "prometheus"
    broken.write_text("#!/bin/sh\necho 'err: unknown flag --bogus' >&2\nexit 2\n")
    broken.chmod(0o755)
    stack = Stack(tmp_path / "stack", settings=settings, search_path=str(bin_dir),
                  ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0})
    try:
        with pytest.raises(StackError) as error:
            stack.up()
        left_running = stack.status()  # what up() itself left behind
        pid_files = list((tmp_path / "stack" / "run").glob("*.pid"))
    finally:
        stack.down()
    assert "prometheus exited while starting" in str(error.value)
    assert "unknown flag --bogus" in str(error.value)  # the log tail says why
    assert not any(left_running.values()) and not pid_files


def test_a_pid_file_never_stops_a_process_that_reused_the_pid(tmp_path):
    from ragmon.stack.process import stop_process
    me = psutil.Process()
    stale = PidFile(tmp_path / "prometheus.pid")
    stale.path.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 100}))
    assert stale.process() is None
    assert stop_process(stale) is False and me.is_running()
    assert not stale.path.exists()
