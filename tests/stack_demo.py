"""The demo service (`python m2_3_monitoring.py`) as a subprocess for the stack tests: started on
a given port, optionally with a fault, stopped by its PID (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ragmon.stack.process import http_ok, log_tail, wait_until
from tests.stack_promql import WORKSPACE


class Demo:
    def __init__(self, port: int, workdir: Path, fault: str | None = None, qps: float = 5.0):
        self.port, self.workdir, self.fault, self.qps = port, workdir, fault, qps
        self.process: subprocess.Popen | None = None
        self.log = workdir / f"demo-{port}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, fault: str | None = None) -> "Demo":
        self.fault = fault if fault is not None else self.fault
        argv = [sys.executable, str(WORKSPACE / "m2_3_monitoring.py"), "--port", str(self.port),
                "--addr", "127.0.0.1", "--qps", str(self.qps), "--quiet",
                "--log-dir", str(self.workdir / f"logs-{self.port}")]
        if self.fault:
            argv += ["--fault", self.fault]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=WORKSPACE, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._serving, timeout=60):
            self.stop()
            raise RuntimeError(f"the demo on port {self.port} did not serve /metrics; its log "
                               f"ends with:\n{log_tail(self.log)}")
        return self

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the demo on port {self.port} exited with {self.process.returncode}:"
                               f"\n{log_tail(self.log)}")
        return http_ok(f"http://{self.target}/metrics")

    def restart_without_fault(self) -> None:
        """The fault stops: the same service, on the same port, back to normal."""
        self.stop()
        self.fault = None
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
