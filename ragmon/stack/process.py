"""The one way to start, wait for and stop processes: the stack's daemons, the demo replicas,
the notebook's servers, the tests' and the benchmark's.

A process is known by its pid AND its start time (OwnedProcess): stopping it can never signal a
later process that reused the pid. A pid file holds both, so `down` from another shell stops
exactly what `up` started. `Processes` is a registry that stops everything it started from
atexit and SIGTERM too; `wait_until` polls with a deadline and says what never happened.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

INSTALL_COMMAND = ("sudo apt-get install prometheus prometheus-alertmanager "
                   "prometheus-pushgateway prometheus-node-exporter victoria-metrics")
PID_LOG_ENV = "RAGMON_NOTEBOOK_PID_LOG"


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
# The high-availability stack (`up --ha`) adds a second Prometheus replica, a second
# Alertmanager peer and VictoriaMetrics, the long-term store both replicas write to.
HA_COMPONENTS = (
    Component("prometheus_2", ("prometheus",), True, "/-/ready"),
    Component("alertmanager_2", ("prometheus-alertmanager", "alertmanager"), True, "/-/ready"),
    Component("victoria_metrics", ("victoria-metrics",), True, "/health"),
)
ALL_COMPONENTS = COMPONENTS + HA_COMPONENTS


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


def create_time_of(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:  # gone already: nothing will ever match it
        return 0.0


@dataclass
class OwnedProcess:
    """A process we started (or adopted), known by pid AND start time, so that stopping it can
    never signal a later process that reused the pid."""
    name: str
    pid: int
    create_time: float
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    log_path: Path | None = None

    def process(self) -> psutil.Process | None:
        """The live process, or None (exited, pid reused, zombie)."""
        return owned_process(self.pid, self.create_time)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return self.process() is not None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; reaps our own child. Its exit code if known."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    return self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    return self.popen.wait(timeout)
            return self.popen.returncode
        process = self.process()
        return None if process is None else terminate(process, timeout)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines) if self.log_path else "(no log)"


def spawn(name: str, argv: Sequence[str], log_path: str | os.PathLike, *,
          cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> OwnedProcess:
    """Starts argv in its own session (it outlives a CLI `up`, and a terminal's Ctrl-C does not
    reach it), stdin closed, stdout and stderr appended to `log_path` (a caller never blocks on
    a full pipe)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Component logs may quote receiver URLs and their tokens: readable by the owner only.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as log:
        popen = subprocess.Popen([str(arg) for arg in argv], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                 env=None if env is None else {**os.environ, **env})
    return OwnedProcess(name, popen.pid, create_time_of(popen.pid), popen, log_path)


class PidFile:
    """An OwnedProcess on disk: `down` from another shell stops exactly what `up` started."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, owned: OwnedProcess) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": owned.pid, "create_time": owned.create_time,
                                   "name": owned.name,
                                   "log": str(owned.log_path) if owned.log_path else None}))
        os.replace(tmp, self.path)

    def owned(self) -> OwnedProcess | None:
        """The process this file names, or None (no file, unreadable)."""
        try:
            data = json.loads(self.path.read_text())
            return OwnedProcess(data.get("name", self.path.stem), int(data["pid"]),
                                float(data["create_time"]),
                                log_path=Path(data["log"]) if data.get("log") else None)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process this file names, or None (no file, gone, pid reused, zombie)."""
        owned = self.owned()
        return None if owned is None else owned.process()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def start_process(argv: list[str], log_path: Path, pid_file: PidFile, cwd: Path,
                  env: Mapping[str, str] | None = None) -> OwnedProcess:
    """Starts a daemon (of the stack, or a server a test runs) and records it in `pid_file`."""
    owned = spawn(pid_file.path.stem, argv, log_path, cwd=cwd, env=env)
    pid_file.write(owned)
    return owned


def stop_process(pid_file: PidFile, owned: OwnedProcess | None = None,
                 timeout: float = 10.0) -> bool:
    """Stops what `pid_file` names (or `owned`, our own child, which is also reaped).
    True if something was running."""
    recorded = pid_file.owned()
    running = recorded is not None and recorded.process() is not None
    if owned is not None and owned.pid == getattr(recorded, "pid", owned.pid):
        running = running or owned.alive()
        owned.stop(timeout)
    elif running:
        recorded.stop(timeout)
    pid_file.remove()
    return running


def stop_process_group(pid_file: PidFile, owned: OwnedProcess | None = None,
                       timeout: float = 10.0) -> bool:
    """stop_process() for a server that forks workers (gunicorn, uvicorn --workers): stops the
    leader, then every process left in its process group, each by pid and start time. spawn()
    makes each process the leader of its own session and group; a leader killed after `timeout`
    (a master stuck in a hook) would otherwise leave its workers running. True if the leader was
    running."""
    leader = owned if owned is not None else pid_file.owned()
    members = group_members(leader) if leader is not None else []
    running = stop_process(pid_file, owned, timeout)
    if leader is not None:
        members += group_members(leader)  # forked while the leader was stopping
    for pid, created in members:
        member = owned_process(pid, created)
        if member is not None:
            terminate(member, timeout)
    return running


def group_members(leader: OwnedProcess) -> list[tuple[int, float]]:
    """(pid, start time) of the processes in the group `leader` leads, itself left out: those
    started after it whose process group id is its pid."""
    found = []
    for process in psutil.process_iter(["create_time"]):
        try:
            if (process.pid != leader.pid and os.getpgid(process.pid) == leader.pid
                    and process.info["create_time"] >= leader.create_time - 0.01):
                found.append((process.pid, process.info["create_time"]))
        except (OSError, psutil.Error):
            continue
    return found


class Processes:
    """A registry of everything a session (the notebook, a test, a benchmark) starts; it stops
    them by PID (never by name) from `stop_all()`, from atexit and from SIGTERM.

    `start()` spawns a process; `on_cleanup()` registers a callable such as `stack.down`;
    `adopt_descendants()` records the PIDs of every process below this one (e.g. the servers
    `Stack.up()` started) so even a runner that forgets one cannot leak it. With `pid_log` (or
    RAGMON_NOTEBOOK_PID_LOG) every owned PID is appended to a JSONL file, so a test can prove
    that nothing survived.
    """

    def __init__(self, pid_log: str | os.PathLike | None = None, *, stop_timeout: float = 5.0,
                 handle_signals: bool = True):
        pid_log = pid_log if pid_log is not None else os.environ.get(PID_LOG_ENV) or None
        self.pid_log = Path(pid_log) if pid_log else None
        self.stop_timeout = stop_timeout
        self._owned: dict[int, OwnedProcess] = {}
        self._cleanups: list[tuple[str, Callable[[], Any]]] = []
        self._lock = threading.RLock()
        if handle_signals:
            atexit.register(self.stop_all)
            self._install_sigterm()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # registration
    def start(self, name: str, argv: Sequence[str], *, log_path: str | os.PathLike,
              env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        owned = spawn(name, argv, log_path, cwd=cwd, env=env)
        self._remember(owned)
        return owned.popen

    def owned(self, proc: subprocess.Popen | int) -> OwnedProcess:
        pid = proc.pid if isinstance(proc, subprocess.Popen) else int(proc)
        owned = self._owned.get(pid)
        if owned is None:
            raise ValueError(f"pid {pid} was not started or adopted by this registry; "
                             "only processes the registry owns are stopped")
        return owned

    def on_cleanup(self, name: str, func: Callable[[], Any]) -> None:
        with self._lock:
            self._cleanups.append((name, func))

    def adopt_descendants(self, name: str = "child") -> list[int]:
        """Records every live descendant of this process not yet owned; returns their PIDs."""
        adopted = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.pid in self._owned:
                    continue
                self._remember(OwnedProcess(f"{name}:{proc.name()}", proc.pid, proc.create_time()))
                adopted.append(proc.pid)
            except psutil.NoSuchProcess:
                continue
        return adopted

    def _remember(self, owned: OwnedProcess) -> None:
        with self._lock:
            self._owned[owned.pid] = owned
            if self.pid_log is not None:
                line = json.dumps({"name": owned.name, "pid": owned.pid,
                                   "create_time": owned.create_time}) + "\n"
                fd = os.open(self.pid_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)

    # state
    def rows(self) -> list[dict]:
        """name, pid, alive, log of every owned process."""
        return [{"name": o.name, "pid": o.pid, "alive": o.process() is not None,
                 "log": str(o.log_path) if o.log_path else ""} for o in list(self._owned.values())]

    def alive(self) -> list[int]:
        return [o.pid for o in list(self._owned.values()) if o.process() is not None]

    # stopping
    def stop(self, proc: subprocess.Popen | int, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL one owned process. Returns its exit code if known."""
        return self.owned(proc).stop(self.stop_timeout if timeout is None else timeout)

    def stop_all(self) -> list[str]:
        """Runs cleanups (newest first), then stops every owned process still alive.

        Returns a list of problems (empty when everything stopped); never raises, because it is
        called from atexit and after failures.
        """
        problems: list[str] = []
        with self._lock:
            cleanups, self._cleanups = self._cleanups[::-1], []
        for name, func in cleanups:
            try:
                func()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                problems.append(f"cleanup {name}: {exc!r}")
        for owned in sorted(self._owned.values(), key=lambda o: -o.create_time):
            try:
                owned.stop(self.stop_timeout)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"stop {owned.name} (pid {owned.pid}): {exc!r}")
        for owned in self._owned.values():
            if owned.process() is not None:
                problems.append(f"{owned.name} (pid {owned.pid}) is still alive")
        return problems

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.stop_all()
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signal.SIGTERM)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread of the main interpreter
            pass


def wait_until(check: Callable[[], Any], timeout: float, *, what: str | None = None,
               interval: float = 0.2, retry_on: tuple[type[BaseException], ...] = (OSError,)) -> Any:
    """Calls `check` until it returns something truthy (a non-empty table counts) and returns
    that; raises TimeoutError naming `what` and the last result after `timeout` seconds.

    Exceptions of the types in `retry_on` (by default OSError: a server still starting refuses
    connections; add APIError for an engine that is still loading) count as "not yet" and are
    quoted if the deadline passes; any other exception propagates at once (a process that died
    will not come back).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if _truthy(last):
                return last
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g} s for "
                               f"{what or getattr(check, '__name__', 'the condition')}; "
                               f"the last check returned {last!r}")
        time.sleep(interval)


def _truthy(value: Any) -> bool:
    empty = getattr(value, "empty", None)  # a pandas table or series
    if isinstance(empty, bool):
        return not empty
    return bool(value)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
