import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragmon.settings import ConfigError, Settings, describe, load_settings
from tests.conftest import make_settings


def load(**env):
    return load_settings({k: str(v) for k, v in env.items()}, dotenv_path=os.devnull)


def test_defaults_match_the_product_design():
    s = load()
    assert (s.METRICS_PORT, s.METRICS_ADDR, s.SERVICE_NAME, s.ENV) == (8000, "127.0.0.1", "rag-service", "development")
    assert (s.COST_PER_1K_INPUT_TOKENS, s.COST_PER_1K_OUTPUT_TOKENS) == (0.003, 0.015)
    assert s.MAX_LABEL_VALUES == 100


def test_settings_are_frozen():
    with pytest.raises(Exception):
        load().METRICS_PORT = 1


def test_values_are_parsed_and_typed():
    s = load(METRICS_PORT="9100", ENV="Production", LOG_RAW_TEXT="yes", LOG_LEVEL="debug",
             LABEL_LIMITS="rag_errors_total=5", STAGE_BUDGETS="retrieval=1.5, generation=4")
    assert s.METRICS_PORT == 9100 and s.ENV == "production" and s.LOG_RAW_TEXT is True
    assert s.LOG_LEVEL == "DEBUG"
    assert s.label_limit("rag_errors_total") == 5 and s.label_limit("rag_tokens_total") == 100
    assert s.STAGE_BUDGETS == {"retrieval": 1.5, "generation": 4.0}


@pytest.mark.parametrize("name, value, expected", [
    ("METRICS_PORT", "abc", "whole number"),
    ("METRICS_PORT", "70000", "out of range"),
    ("COST_PER_1K_INPUT_TOKENS", "-0.1", ">= 0"),
    ("COST_PER_1K_OUTPUT_TOKENS", "cheap", "not a number"),
    ("ENV", "prod", "development, staging, production"),
    ("METRICS_ADDR", "my host", "not an IP address"),
    ("LOG_RAW_TEXT", "maybe", "boolean"),
    ("BOTTLENECK_SHARE", "1.5", "fraction"),
    ("STAGE_BUDGETS", "retrieval", "key=value"),
    ("MAX_LABEL_VALUES", "0", "out of range"),
])
def test_bad_values_name_the_variable_the_value_and_the_form(name, value, expected):
    with pytest.raises(ConfigError) as err:
        load(**{name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and expected in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_environment_overrides_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("METRICS_PORT=9001\nSERVICE_NAME=from-dotenv\n")
    s = load_settings({"METRICS_PORT": "9002"}, dotenv_path=dotenv)
    assert s.METRICS_PORT == 9002 and s.SERVICE_NAME == "from-dotenv"


def test_thresholds_must_be_ordered():
    with pytest.raises(ConfigError, match="VERY_SLOW_QUERY_SECONDS"):
        load(SLOW_QUERY_SECONDS="10", VERY_SLOW_QUERY_SECONDS="5")


def test_env_example_documents_every_setting():
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", ".env.example")).read()
    missing = [name for name in Settings.__dataclass_fields__ if f"{name}=" not in text]
    assert not missing, f".env.example lacks {missing}"


def test_describe_masks_secrets():
    shown = describe(load(LOG_HASH_KEY="secret", SMTP_PASSWORD="hunter2", SLACK_WEBHOOK_URL="https://x/y"))
    assert shown["LOG_HASH_KEY"] == "(set)" and shown["SMTP_PASSWORD"] == "(set)"
    assert "hunter2" not in str(shown) and "https://x/y" not in str(shown)


# --- settings given in code --------------------------------------------------------------------

CONFIGURED_IN_CODE = """
import json, os, sys
import ragmon
from prometheus_client import REGISTRY

log_dir = sys.argv[1]
ragmon.configure(LOG_DIR=log_dir, SERVICE_NAME="answers", ENV="production",
                 MODEL_PRICES_FILE="", COST_PER_1K_INPUT_TOKENS=2.0,
                 COST_PER_1K_OUTPUT_TOKENS=0, LABEL_LIMITS={"rag_errors_total": 3})

@ragmon.monitored_query(operation="answer", model="in-house-model")
def answer(q):
    return {"answer": "ok", "input_tokens": 500, "output_tokens": 10}

answer("q")
try:
    ragmon.configure(METRICS_PORT="eighty")
except ragmon.ConfigError as exc:
    bad = str(exc)
print(json.dumps({
    "spend": REGISTRY.get_sample_value("rag_spend_dollars_total", {"model": "in-house-model"}),
    "records": [json.loads(l) for f in sorted(os.listdir(log_dir))
                for l in open(os.path.join(log_dir, f))],
    "limit": ragmon.get_settings().label_limit("rag_errors_total"),
    "bad": bad,
}))
"""


def test_the_library_is_configured_in_code_only(tmp_path):
    """No environment variable and no .env: everything comes from ragmon.configure()."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    log_dir = tmp_path / "records"
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.abspath(root)}
    result = subprocess.run([sys.executable, "-c", CONFIGURED_IN_CODE, str(log_dir)], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["spend"] == pytest.approx(1.0)          # 500 tokens at $2 per 1K
    assert [(r["service"], r["env"], r["operation"]) for r in seen["records"]] == [
        ("answers", "production", "answer")]
    assert seen["limit"] == 3
    assert "METRICS_PORT='eighty'" in seen["bad"] and "whole number" in seen["bad"]


def test_make_settings_checks_names_and_values():
    from ragmon.settings import make_settings as from_values
    settings = from_values(LOG_DIR=Path("/tmp/x"), LOG_RAW_TEXT=False, STAGE_BUDGETS={"retrieval": 1.5},
                           MAX_LABEL_VALUES=7)
    assert settings.LOG_DIR == "/tmp/x" and settings.STAGE_BUDGETS == {"retrieval": 1.5}
    assert settings.MAX_LABEL_VALUES == 7 and settings.LOG_RAW_TEXT is False
    with pytest.raises(ConfigError, match="unknown setting.*LOG_DIRECTORY"):
        from_values(LOG_DIRECTORY="/tmp")
    with pytest.raises(ConfigError, match="MAX_LABEL_VALUES='0'.*out of range"):
        from_values(MAX_LABEL_VALUES=0)
    with pytest.raises(ConfigError, match="has type list"):
        from_values(LOG_DIR=["/tmp"])


def test_configure_reaches_metrics_that_follow_the_process_settings():
    from prometheus_client import CollectorRegistry

    import ragmon
    from ragmon.instrument.catalog import RAGMetrics
    from ragmon.settings import get_settings
    before = get_settings()
    try:
        ragmon.configure(MODEL_PRICES_FILE="", COST_PER_1K_INPUT_TOKENS=1.0)
        follows = RAGMetrics(registry=CollectorRegistry())
        pinned = RAGMetrics(registry=CollectorRegistry(), settings=make_settings())
        assert follows.calculate_cost(1000, 0, "m") == pytest.approx(1.0)
        ragmon.configure(MODEL_PRICES_FILE="", COST_PER_1K_INPUT_TOKENS=3.0)
        follows.settings_changed()
        pinned.settings_changed()
        assert follows.calculate_cost(1000, 0, "m") == pytest.approx(3.0)
        assert pinned.calculate_cost(1000, 0, "m") == pytest.approx(0.003)
        with pytest.raises(ValueError, match="either a Settings object or named values"):
            ragmon.configure(make_settings(), LOG_DIR="/tmp")
    finally:
        ragmon.configure(before)


@pytest.mark.parametrize("entry_point,args", [("m2_3_stack.py", ["status"]),
                                              ("m2_3_monitoring.py", ["--duration", "1"]),
                                              ("m2_3_report.py", ["stats"])])
def test_a_dotenv_that_is_not_utf8_stops_each_entry_point_with_a_clear_error(tmp_path, entry_point, args):
    root = Path(__file__).resolve().parents[2]
    (tmp_path / ".env").write_bytes(b"LOG_LEVEL=INFO\nSERVICE_NAME=caf\xe9\n")
    done = subprocess.run([sys.executable, str(root / entry_point), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "SERVICE_NAME")})
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert str(tmp_path / ".env") in done.stderr and "offset 31 (line 2)" in done.stderr, done.stderr


def test_a_dotenv_that_is_not_utf8_is_a_config_error_naming_the_byte(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"SERVICE_NAME=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"\.env is not UTF-8: byte 0xff at offset 13 \(line 1\)"):
        load_settings({}, dotenv_path=path)


RECONFIGURED = """
import glob, json, os, sys
import ragmon
from ragmon.instrument.runtime import STATE
first, second = sys.argv[1], sys.argv[2]
ragmon.configure(LOG_DIR=first)

@ragmon.monitored_query("answer")
def answer():
    return "ok"

answer()
ragmon.configure(LOG_DIR=second)  # a function already in use follows the new settings
answer()
print(json.dumps({
    "first": sum(1 for p in glob.glob(first + "/*.jsonl") for _ in open(p)),
    "second": sum(1 for p in glob.glob(second + "/*.jsonl") for _ in open(p)),
    "lost": STATE.metrics.registry.get_sample_value(
        "rag_instrumentation_errors_total", {"reason": "record_write"}),
}))
"""


def test_a_monitored_function_in_use_writes_its_records_where_configure_points_next(tmp_path):
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.abspath(root)}
    result = subprocess.run([sys.executable, "-c", RECONFIGURED, str(tmp_path / "a"),
                             str(tmp_path / "b")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"first": 1, "second": 1, "lost": None}
