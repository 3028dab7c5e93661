"""Shared fixtures. Every test gets its own CollectorRegistry and settings built from a dict,
so no test depends on the machine's environment, a .env file or another test's metrics."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from ragmon.settings import load_settings
from ragmon.instrument.catalog import RAGMetrics


WORKSPACE = Path(__file__).resolve().parents[1]
# What building and running the tests may leave: the venv, caches, the editable install's metadata.
_BYPRODUCTS = (".venv/", "__pycache__/", ".pytest_cache/", ".ipynb_checkpoints/", ".egg-info/")


def _tree_state() -> list[str] | None:
    """The working tree's changes and untracked/ignored files, byproducts left out."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             cwd=WORKSPACE, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sorted(line for line in out.stdout.splitlines()
                  if not any(part in line for part in _BYPRODUCTS))


def pytest_configure(config):
    # Anything a test (or a process it starts) writes by default goes to a temp dir, never into
    # the checkout: request records, app logs and the local stack's data.
    scratch = Path(tempfile.mkdtemp(prefix="ragmon-tests-"))
    os.environ.setdefault("LOG_DIR", str(scratch / "logs"))
    os.environ.setdefault("STACK_DIR", str(scratch / "stack"))
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(scratch / "hypothesis"))
    config._ragmon_scratch = scratch
    config._ragmon_tree_before = _tree_state()


# Children of the interpreter itself, which end with it; not servers a test started.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _stray_processes() -> list[psutil.Process]:
    """The processes below this test run that are still running. Every server a test starts
    (gunicorn, uvicorn, the demo, Prometheus & co.) must be stopped by the test, failed or not."""
    strays = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if not any(helper in command for helper in _INTERPRETER_HELPERS):
            strays.append(process)
    return strays


def _stop_strays(config) -> None:
    """Names the processes the tests left running, stops them (by pid) and fails the run."""
    from ragmon.stack.process import terminate
    strays = _stray_processes()
    if not strays:
        return
    lines = []
    for process in strays:
        try:
            lines.append(f"  pid {process.pid}, running {time.time() - process.create_time():.0f} s:"
                         f" {' '.join(process.cmdline())[:300]}")
        except psutil.Error:
            continue
    for process in strays:  # parents first: a gunicorn master stops its own workers
        terminate(process, 10)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    message = ("the tests left these processes running (stopped now); a test must stop every "
               "server it starts, also when it fails:\n" + "\n".join(lines))
    if reporter is not None:
        reporter.write_line(message, red=True)
    config._ragmon_strays = lines


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    _stop_strays(config)
    if getattr(config, "_ragmon_strays", None):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    before = getattr(config, "_ragmon_tree_before", None)
    after = _tree_state()
    shutil.rmtree(getattr(config, "_ragmon_scratch", ""), ignore_errors=True)
    if before is None or after is None or before == after:
        return
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    message = ("the test run changed the working tree (tests must write only to temp dirs):\n"
               + "\n".join([f"  now: {line}" for line in added] + [f"  was: {line}" for line in removed]))
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def require_binaries(*names: str, install: str | None = None) -> list[str]:
    """Paths of the Debian binaries a test runs for real. Missing ones fail the test under
    CI=true (CI must run it) and skip it elsewhere, naming the install command (`install`,
    default the monitoring stack's)."""
    from ragmon.stack.process import INSTALL_COMMAND
    paths = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing:
        message = (f"{missing} not installed: {install or INSTALL_COMMAND} "
                   "(`make test` installs them as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return paths


def make_settings(**overrides):
    values = {"MODEL_PRICES_FILE": "", "PRICE_DATABASE": "none", "REQUEST_LOG_DESTINATION": "none",
              "LOG_DESTINATION": "none"}
    values.update({key: str(value) for key, value in overrides.items()})
    return load_settings(values, dotenv_path=os.devnull)


@pytest.fixture
def settings():
    return make_settings()


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def metrics(registry, settings):
    return RAGMetrics(registry=registry, settings=settings)


class ListSink:
    """A record sink that keeps records in memory (the file sink has its own tests)."""

    def __init__(self):
        self.records = []

    def write(self, record, at=None):
        self.records.append(record)


@pytest.fixture
def sink():
    return ListSink()
