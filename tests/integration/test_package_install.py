"""The wheel, installed into a fresh virtualenv outside the checkout, monitors a service that has
its own config.py and .env."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

WORKSPACE = Path(__file__).resolve().parents[2]

SERVICE = textwrap.dedent('''
    # The service's own module names: ragmon must not pick these up.
    import json, os, sys
    import config, settings

    import ragmon
    from prometheus_client import REGISTRY

    assert config.get_settings() == "the service's own settings"

    @ragmon.monitored_query(operation="answer", model="gpt-4o-mini")
    def answer(question):
        with ragmon.stage("retrieval"):
            pass
        return {"answer": "42", "input_tokens": 1000, "output_tokens": 500}

    for i in range(5):
        answer(f"q{i}")

    sample = REGISTRY.get_sample_value
    errors = sum(s.value for m in REGISTRY.collect() if m.name == "rag_instrumentation_errors"
                 for s in m.samples if s.name.endswith("_total"))
    print(json.dumps({
        "queries": sample("rag_queries_total", {"operation": "answer", "status": "success"}),
        "input_tokens": sample("rag_tokens_total", {"model": "gpt-4o-mini", "token_type": "input"}),
        "spend": sample("rag_spend_dollars_total", {"model": "gpt-4o-mini"}),
        "instrumentation_errors": errors,
        "ragmon_file": ragmon.__file__,
        "records": sorted(os.listdir(os.environ["LOG_DIR"])),
    }))
''')


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the wheel built from this checkout (and the [stack] extra)."""
    root = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = root / "source"
    shutil.copytree(WORKSPACE, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "logs", ".stack", ".pytest_cache"))
    dist = root / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                 str(source)], cwd=root)
    assert built.returncode == 0, built.stderr
    wheels = list(dist.glob("ragmon-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    done = run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                f"{wheels[0]}[stack]"], cwd=root)
    assert done.returncode == 0, done.stderr
    return python


def clean_env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "LOG_DIR", "STACK_DIR", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def test_a_service_with_its_own_config_py_and_env_is_fully_monitored(installed, tmp_path):
    service = tmp_path / "service"
    service.mkdir()
    (service / "config.py").write_text("DATABASE_URL = 'postgres://db'\n"
                                       "def get_settings():\n    return \"the service's own settings\"\n")
    (service / "settings.py").write_text("DEBUG = True\n")
    (service / ".env").write_text("DATABASE_URL=postgres://db\nSECRET_KEY=abc\nFEATURE_FLAGS=a,b\n")
    (service / "app.py").write_text(SERVICE)
    log_dir = tmp_path / "records"
    result = run([str(installed), "app.py"], cwd=service, env=clean_env(LOG_DIR=str(log_dir)))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["queries"] == 5
    assert seen["input_tokens"] == 5000
    assert seen["spend"] > 0
    assert seen["instrumentation_errors"] == 0
    assert not seen["ragmon_file"].startswith(str(WORKSPACE)), "imported the checkout, not the wheel"
    assert len(seen["records"]) == 1 and seen["records"][0].endswith("_performance.jsonl")
    lines = (log_dir / seen["records"][0]).read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["operation"] == "answer" for line in lines)


def test_the_installed_package_carries_its_price_database(installed, tmp_path):
    code = ("import ragmon; found = ragmon.metrics.price_table.match('claude-sonnet-4-5'); "
            "print(found.known, found.source.replace(' ', '_'), found.entry)")
    result = run([str(installed), "-c", code], cwd=tmp_path, env=clean_env(LOG_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    known, source, entry = result.stdout.split()
    assert (known, entry) == ("True", "anthropic/claude-sonnet-4-5")
    assert source == "shipped", "the wheel without the [prices] extra prices from its snapshot"


@pytest.mark.parametrize("script", ["ragmon-demo", "ragmon-report", "ragmon-stack"])
def test_console_scripts_answer_help(installed, tmp_path, script):
    result = run([str(installed.parent / script), "--help"], cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
