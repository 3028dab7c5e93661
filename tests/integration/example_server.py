"""examples/rag_service.py served for real, as docs/production.md says: gunicorn with uvicorn
workers and examples/gunicorn.conf.py, or uvicorn --workers; loopback, free ports, temp dirs,
stopped by PID. Shared by tests/integration/test_workers.py and bench/bench_workers.py."""
from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from ragmon.stack.api import http_ok
from ragmon.stack.process import (PidFile, free_port, log_tail, start_process,
                                  stop_process_group, wait_until)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class ExampleServer:
    def __init__(self, workdir: Path, openai_base_url: str, *, workers: int = 4,
                 preload: bool = False, server: str = "gunicorn", app: str = "rag_service:app"):
        self.workdir = workdir
        self.multiproc_dir = workdir / "metrics"
        self.log_dir = workdir / "logs"
        self.port = free_port()
        self.metrics_port = free_port()  # gunicorn's master serves /metrics here (when_ready)
        self.workers = workers
        self.server = server
        self.server_log = workdir / f"{server}.log"
        self.pid_file = PidFile(workdir / f"{server}.pid")
        if server == "gunicorn":
            self.argv = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
                         "--chdir", str(EXAMPLES), "--workers", str(workers), app]
            if preload:
                self.argv.append("--preload")
        else:
            self.argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES),
                         "--host", "127.0.0.1", "--port", str(self.port), "--workers",
                         str(workers), "--timeout-keep-alive", "75", "--no-access-log", app]
            self.multiproc_dir.mkdir(parents=True)  # uvicorn has no start hook: a fresh dir
        self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
                    "OPENAI_BASE_URL": openai_base_url, "OPENAI_API_KEY": "sk-test-local",
                    "BIND": f"127.0.0.1:{self.port}", "METRICS_PORT": str(self.metrics_port),
                    "LOG_DIR": str(self.log_dir), "REQUEST_LOG_DESTINATION": "file",
                    "LOG_DESTINATION": "none", "SERVICE_NAME": "rag-example",
                    "PYTHONPATH": str(ROOT)}
        self.owned = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ExampleServer":
        self.owned = start_process(self.argv, self.server_log, self.pid_file, self.workdir,
                                   env=self.env)
        try:
            wait_until(self._all_workers_ready, timeout=90, interval=0.3,
                       what=f"{self.server} to start {self.workers} workers")
        except TimeoutError as exc:
            self.__exit__()
            raise RuntimeError(f"{exc}:\n" + log_tail(self.server_log, 40)) from None
        return self

    def __exit__(self, *exc) -> None:
        # The master and every worker: a master killed after the timeout leaves its workers.
        stop_process_group(self.pid_file, self.owned, timeout=15)

    def _all_workers_ready(self) -> bool:
        if self.owned.popen.poll() is not None:
            raise RuntimeError(f"{self.server} exited:\n" + log_tail(self.server_log, 40))
        text = self.server_log.read_text(errors="replace")
        return (text.count("Application startup complete") >= self.workers
                and http_ok(self.url + "/health") and len(self.worker_pids()) == self.workers)

    # --- what is running ---------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        """The serving workers (uvicorn's supervisor also runs a resource tracker: skipped)."""
        try:
            children = psutil.Process(self.owned.pid).children()
        except psutil.Error:
            return []
        return [c.pid for c in children if "multiprocessing.resource_tracker" not in " ".join(
            _cmdline(c))]

    def booted_workers(self) -> int:
        return self.server_log.read_text(errors="replace").count("Application startup complete")

    # --- what it reports ---------------------------------------------------------------------
    def scrape(self, url: str | None = None) -> dict[tuple, float]:
        """{(sample name, sorted labels): value} from /metrics."""
        text = urllib.request.urlopen(url or self.url + "/metrics", timeout=10).read().decode()
        return parse_samples(text)

    def records(self) -> list[dict]:
        out = []
        for path in sorted(self.log_dir.glob("*_performance.jsonl")):
            for line in path.read_text().splitlines():
                out.append(json.loads(line))  # a torn line fails the test: records are whole
        return out


def parse_samples(text: str) -> dict[tuple, float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(value for (sample, lbls), value in samples.items()
               if sample == name and want <= set(lbls))


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def wait_for(check, timeout: float = 30.0, what: str = "condition") -> None:
    try:
        wait_until(check, timeout, what=what, interval=0.1)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None

