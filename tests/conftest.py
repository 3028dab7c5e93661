"""Shared fixtures. Every test gets its own CollectorRegistry and settings built from a dict,
so no test depends on the machine's environment, a .env file or another test's metrics."""
from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client import CollectorRegistry

from ragmon.settings import load_settings
from ragmon.instrument.catalog import RAGMetrics


def require_binaries(*names: str) -> list[str]:
    """Paths of the Debian binaries a test runs for real. Missing ones fail the test under
    CI=true (CI must run it) and skip it elsewhere, naming the install command."""
    from ragmon.stack.process import INSTALL_COMMAND
    paths = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing:
        message = f"{missing} not installed: {INSTALL_COMMAND} (`make test` installs them as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return paths


def make_settings(**overrides):
    values = {"MODEL_PRICES_FILE": "", "REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"}
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
