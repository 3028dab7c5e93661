"""The demo service (`python m2_3_monitoring.py`) as a subprocess for the stack tests: started on
a given port, optionally with a fault and an instance name, stopped by its PID (SIGTERM, then
SIGKILL) through the stack's process manager."""
from __future__ import annotations

import sys
from pathlib import Path

from ragmon.stack.api import http_ok
from ragmon.stack.process import OwnedProcess, spawn, wait_until
from tests.stack_promql import WORKSPACE


class Demo:
    def __init__(self, port: int, workdir: Path, fault: str | None = None, qps: float = 5.0,
                 instance: str | None = None):
        self.port, self.workdir, self.fault, self.qps = port, workdir, fault, qps
        self.instance = instance
        self.owned: OwnedProcess | None = None
        self.log = workdir / f"demo-{port}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / f"logs-{self.port}"

    @property
    def process(self):
        return None if self.owned is None else self.owned.popen

    def start(self, fault: str | None = None) -> "Demo":
        self.fault = fault if fault is not None else self.fault
        argv = [sys.executable, str(WORKSPACE / "m2_3_monitoring.py"), "--port", str(self.port),
                "--addr", "127.0.0.1", "--qps", str(self.qps), "--quiet",
                "--log-dir", str(self.log_dir)]
        if self.fault:
            argv += ["--fault", self.fault]
        if self.instance:
            argv += ["--instance", self.instance]
        self.owned = spawn(f"demo-{self.port}", argv, self.log, cwd=WORKSPACE)
        try:
            wait_until(self._serving, timeout=60, what=f"the demo on port {self.port} to serve /metrics")
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its log ends with:\n{self.owned_log_tail()}") from None
        return self

    def owned_log_tail(self) -> str:
        from ragmon.stack.process import log_tail
        return log_tail(self.log)

    def _serving(self) -> bool:
        popen = self.owned.popen
        if popen.poll() is not None:
            raise RuntimeError(f"the demo on port {self.port} exited with {popen.returncode}:"
                               f"\n{self.owned_log_tail()}")
        return http_ok(f"http://{self.target}/metrics")

    def restart_without_fault(self) -> None:
        """The fault stops: the same service, on the same port, back to normal."""
        self.stop()
        self.fault = None
        self.start()

    def stop(self) -> None:
        if self.owned is not None:
            self.owned.stop(15)
        self.owned = None
