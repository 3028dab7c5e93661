"""The demo as one replica of a service (`--instance NAME`): its own port, its request records in
LOG_DIR/NAME so replicas never share a file, and a clear error for a name that is not one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ragmon.stack.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "m2_3_monitoring.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_each_replica_writes_its_own_request_log(tmp_path):
    for name in ("replica-1", "replica-2"):
        result = demo("--instance", name, "--port", str(free_port()), "--qps", "20",
                      "--duration", "2", "--log-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert f"(replica {name})" in result.stdout
    assert not list(tmp_path.glob("*_performance.jsonl")), "records must go to LOG_DIR/NAME"
    ids = {}
    for name in ("replica-1", "replica-2"):
        files = list((tmp_path / name).glob("*_performance.jsonl"))
        assert files, f"{name} wrote no records"
        ids[name] = {json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()}
        assert ids[name]
    assert not ids["replica-1"] & ids["replica-2"]  # one request, one record, one place


def test_a_bad_instance_name_is_refused_with_an_example(tmp_path):
    result = demo("--instance", "replica 1/../x", "--port", "0", "--log-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--instance 'replica 1/../x' is not a replica name" in result.stderr
    assert "e.g. --instance replica-2" in result.stderr
