"""Shared fixtures. Every test gets its own CollectorRegistry and settings built from a dict,
so no test depends on the machine's environment, a .env file or another test's metrics."""
from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry

from config import load_settings
from ragmon.catalog import RAGMetrics


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
