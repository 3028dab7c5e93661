"""Stopping a server that forks workers (gunicorn's master, uvicorn --workers): the leader and
every process of its group, also when the leader must be killed and its workers are orphaned;
and the test run's own check that no process it started outlives it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from ragmon.stack.process import PidFile, start_process, stop_process_group, wait_until

ROOT = Path(__file__).resolve().parents[2]

# A master that ignores SIGTERM (as one stuck in a hook does) and forks two workers that
# ignore it too; it writes their pids, then sleeps.
MASTER = textwrap.dedent('''
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            while True:
                time.sleep(1)
        pids.append(pid)
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(" ".join(map(str, pids)))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        time.sleep(1)
''')


def test_a_killed_leader_leaves_no_worker_behind(tmp_path):
    workers_file = tmp_path / "workers"
    pid_file = PidFile(tmp_path / "master.pid")
    owned = start_process([sys.executable, "-c", MASTER, str(workers_file)], tmp_path / "log",
                          pid_file, tmp_path)
    try:
        wait_until(workers_file.exists, 30, what="the master to fork its workers")
        workers = [psutil.Process(int(pid)) for pid in workers_file.read_text().split()]
        assert all(os.getpgid(w.pid) == owned.pid for w in workers)
        assert stop_process_group(pid_file, owned, timeout=2) is True
        assert owned.popen.returncode == -9  # it ignored SIGTERM: killed
        for worker in workers:  # orphaned by the kill, stopped anyway
            assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
        assert not pid_file.path.exists()
    finally:
        if owned.alive():
            owned.popen.kill()
            owned.popen.wait(10)


LEAKY_TEST = textwrap.dedent('''
    import subprocess, sys

    def test_starts_a_server_and_forgets_it(tmp_path_factory):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({pid_path!r}, "w") as out:
            out.write(str(proc.pid))
''')


def test_the_test_run_fails_and_stops_a_process_a_test_left_running(tmp_path):
    pid_path = tmp_path / "leaked.pid"
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST.format(pid_path=str(pid_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "tests.conftest", "--rootdir", str(tmp_path),
                             str(tmp_path / "test_leaky.py")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    leaked = int(pid_path.read_text())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "the tests left these processes running (stopped now)" in result.stdout
    assert f"pid {leaked}, running" in result.stdout
    try:
        process = psutil.Process(leaked)
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
