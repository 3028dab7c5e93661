"""Starting and stopping the stack's daemons by PID, from this process or another one.

A pid file holds the pid and the process's start time: `down` from another shell stops exactly
the process that `up` started, never a later process that happens to reuse the pid.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

INSTALL_COMMAND = ("sudo apt-get install prometheus prometheus-alertmanager "
                   "prometheus-pushgateway prometheus-node-exporter")


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class Component:
    name: str                 # key in ports/urls/status: prometheus, alertmanager, ...
    binaries: tuple[str, ...]  # Debian's name first, then the upstream tarball's
    required: bool
    ready_path: str           # GET it until 200


COMPONENTS = (
    Component("prometheus", ("prometheus",), True, "/-/ready"),
    Component("alertmanager", ("prometheus-alertmanager", "alertmanager"), True, "/-/ready"),
    Component("pushgateway", ("prometheus-pushgateway", "pushgateway"), True, "/-/ready"),
    Component("node_exporter", ("prometheus-node-exporter", "node_exporter"), False, "/metrics"),
)


def find_binary(component: Component, path: str | None = None) -> str | None:
    for name in component.binaries:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def missing_binary_error(missing: list[Component]) -> StackError:
    names = ", ".join(c.binaries[0] for c in missing)
    return StackError(f"{names} not found on PATH. The local stack runs the Debian packages; "
                      f"install them with:\n  {INSTALL_COMMAND}\n(or put the upstream binaries "
                      "on PATH)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def owned_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process `pid`, if it is still the one created at `create_time`: a reused pid, a
    zombie or an unknown start time (0) never match, so nothing else is ever signalled."""
    try:
        process = psutil.Process(int(pid))
        if not create_time or abs(process.create_time() - float(create_time)) > 0.01:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (ValueError, psutil.Error):
        return None


def terminate(process: psutil.Process, timeout: float) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`. The exit code when it is our child, else None."""
    try:
        process.terminate()
        try:
            return process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            return process.wait(timeout)
    except psutil.NoSuchProcess:
        return None


class PidFile:
    def __init__(self, path: Path):
        self.path = path

    def write(self, pid: int, exe: str) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:  # gone already: a pid file nobody matches, so status says stopped
            created = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "create_time": created, "exe": exe}))
        os.replace(tmp, self.path)

    def process(self) -> psutil.Process | None:
        """The live process this file names, or None (no file, gone, pid reused, zombie)."""
        try:
            data = json.loads(self.path.read_text())
            return owned_process(data["pid"], data["create_time"])
        except (OSError, ValueError, KeyError):
            return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def start_process(argv: list[str], log_path: Path, pid_file: PidFile, cwd: Path) -> subprocess.Popen:
    """Starts argv detached from our terminal and process group (it outlives a CLI `up`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Component logs may quote receiver URLs and their tokens: readable by the owner only.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as log:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=cwd, start_new_session=True)
    pid_file.write(popen.pid, argv[0])
    return popen


def stop_process(pid_file: PidFile, popen: subprocess.Popen | None = None,
                 timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; reaps our own child. True if something was stopped."""
    process = pid_file.process()
    if process is not None:
        terminate(process, timeout)
    if popen is not None:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    pid_file.remove()
    return process is not None


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
