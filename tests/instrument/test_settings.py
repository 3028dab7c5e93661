import os

import pytest

from ragmon.settings import ConfigError, Settings, describe, load_settings


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
