import io
import json
import logging

import pytest

from m2_3_monitoring import StructuredLogger, monitored_query, redact
from ragmon.instrument.jsonlog import EVENTS_LOGGER
from tests.conftest import make_settings


@pytest.fixture
def lines():
    """Captures the JSON lines the events logger emits."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(EVENTS_LOGGER)
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def make_logger(**overrides):
    return StructuredLogger("svc.module", settings=make_settings(SERVICE_NAME="svc", ENV="staging", **overrides))


def test_every_line_has_the_standard_fields(lines):
    make_logger().log_response(duration_ms=1250.5, tokens={"input": 450, "output": 180}, cost=0.0234, success=True)
    [line] = lines()
    assert set(line) == {"timestamp", "level", "logger", "service", "env", "event", "request_id", "fields"}
    assert line["timestamp"].endswith("+00:00") and line["level"] == "INFO"
    assert (line["logger"], line["service"], line["env"], line["event"]) == ("svc.module", "svc", "staging", "response")
    assert line["fields"] == {"duration_ms": 1250.5, "tokens": {"input": 450, "output": 180}, "cost": 0.0234, "success": True}


def test_query_text_and_user_id_are_hashed_by_default(lines):
    logger = make_logger(LOG_HASH_KEY="k")
    logger.log_request(query="What are the sales figures?", user_id="alice", session_id="sess_123")
    logger.log_request(query="What are the sales figures?", user_id="alice")
    first, second = lines()
    text = json.dumps(first)
    assert "sales" not in text and "alice" not in text
    assert first["fields"]["query_length"] == len("What are the sales figures?")
    assert first["fields"]["query_hash"] == second["fields"]["query_hash"]  # correlatable
    assert first["fields"]["user_hash"] and first["fields"]["session_id"] == "sess_123"


def test_raw_text_is_an_explicit_opt_in(lines):
    make_logger(LOG_RAW_TEXT="true").log_request(query="hello", user_id="alice")
    [line] = lines()
    assert line["fields"]["query"] == "hello" and line["fields"]["user_id"] == "alice"


def test_api_keys_are_redacted_everywhere_even_in_raw_mode(lines):
    logger = make_logger(LOG_RAW_TEXT="true")
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0"
    logger.log_request(query=f"my key is {key}")
    try:
        raise RuntimeError(f"auth failed with Authorization: Bearer {'x' * 24}")
    except RuntimeError as exc:
        logger.log_error(exc, context={"api_key": "api_key=supersecretvalue"})
    text = json.dumps(lines())
    assert key not in text and "x" * 24 not in text and "supersecretvalue" not in text
    assert text.count("[REDACTED]") >= 3


def test_log_error_carries_type_message_traceback_and_context(lines):
    try:
        raise ValueError("API error")
    except ValueError as exc:
        make_logger().log_error(exc, context={"endpoint": "/api/query"})
    [line] = lines()
    assert line["level"] == "ERROR"
    fields = line["fields"]
    assert fields["error_type"] == "ValueError" and fields["message"] == "API error"
    assert "Traceback" in fields["traceback"] and fields["context"] == {"endpoint": "/api/query"}


def test_lines_inside_a_query_carry_its_request_id(lines, metrics, sink):
    logger = make_logger()

    @monitored_query(operation="op", metrics=metrics, request_log=sink)
    def work():
        logger.info("retrieved", documents=3)

    work()
    [line] = lines()
    assert line["request_id"] == sink.records[0]["request_id"]


@pytest.mark.parametrize("call, expected", [
    (lambda l: l.log_response(duration_ms=-1), "duration_ms=-1"),
    (lambda l: l.log_response(duration_ms=1, cost="cheap"), "cost='cheap'"),
    (lambda l: l.log_response(duration_ms=1, tokens=5), "tokens=5"),
    (lambda l: l.log_request(query=None), "query=None"),
    (lambda l: l.log_error("not an exception"), "exception instance"),
])
def test_bad_arguments_raise_clear_errors(call, expected):
    with pytest.raises(ValueError, match=expected):
        call(make_logger())


def test_redact_leaves_ordinary_text_alone():
    assert redact("retrieval took 120 ms for 5 documents") == "retrieval took 120 ms for 5 documents"
    assert redact("key AKIAABCDEFGHIJKLMNOP here") == "key [REDACTED] here"


def test_file_destination_writes_app_jsonl(tmp_path):
    logger = StructuredLogger("x", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=tmp_path))
    logger.warning("disk_low", free_bytes=10)
    line = json.loads((tmp_path / "app.jsonl").read_text().splitlines()[-1])
    assert line["event"] == "disk_low" and line["level"] == "WARNING"


def test_without_a_hash_key_every_logger_in_the_process_hashes_alike():
    first, second = make_logger(), make_logger()
    assert first.hash("alice") == second.hash("alice")
    keyed = make_logger(LOG_HASH_KEY="k")
    assert keyed.hash("alice") != first.hash("alice")


def test_secrets_inside_objects_and_deep_nesting_are_redacted(lines):
    from pathlib import Path
    key = "sk-" + "Z9y8X7w6V5u4T3s2R1q0"
    deep = {"a": {"b": {"c": {"d": {"e": {"f": f"token={key}"}}}}}}
    make_logger().info("odd_values", error=ValueError(f"bad key {key}"), path=Path(f"/tmp/{key}"), deep=deep)
    text = json.dumps(lines())
    assert key not in text and text.count("[REDACTED]") == 3


def test_loggers_with_different_settings_do_not_rewire_each_other(tmp_path, capsys):
    quiet = make_logger()  # LOG_DESTINATION=none
    StructuredLogger("loud", settings=make_settings(LOG_DESTINATION="stderr"))
    quiet.info("should_stay_silent")
    assert "should_stay_silent" not in capsys.readouterr().err


# --- routing: each line reaches each handler exactly once ---------------------------------------

def test_a_handler_on_the_events_logger_gets_each_line_once_and_stderr_stays_quiet(capfd):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger(EVENTS_LOGGER).addHandler(handler)
    try:
        StructuredLogger("routed", settings=make_settings(LOG_DESTINATION="stderr")).info("once")
    finally:
        logging.getLogger(EVENTS_LOGGER).removeHandler(handler)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["once"]
    assert "once" not in capfd.readouterr().err


def test_without_routing_the_destination_writes_each_line_once(capfd, tmp_path):
    settings = make_settings(LOG_DESTINATION="stderr", LOG_DIR=tmp_path)
    StructuredLogger("plain", settings=settings).info("alone")
    assert capfd.readouterr().err.count('"event":"alone"') == 1


def test_propagating_to_the_root_handlers_delivers_each_line_once(capfd, tmp_path):
    stream = io.StringIO()
    root_handler = logging.StreamHandler(stream)
    events = logging.getLogger(EVENTS_LOGGER)
    logging.getLogger().addHandler(root_handler)
    events.propagate = True
    try:
        settings = make_settings(LOG_DESTINATION="stderr", LOG_DIR=tmp_path)
        StructuredLogger("rooted", settings=settings).info("up")
    finally:
        events.propagate = False
        logging.getLogger().removeHandler(root_handler)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["up"]
    assert '"event":"up"' not in capfd.readouterr().err


@pytest.mark.parametrize("disable_existing, delivered", [(False, ["kept"]), (True, [])])
def test_dict_config_silences_the_events_unless_existing_loggers_are_kept(tmp_path, disable_existing,
                                                                          delivered):
    import logging.config
    logger = StructuredLogger("configured", settings=make_settings(LOG_DIR=tmp_path))
    stream = io.StringIO()
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": disable_existing,
        "handlers": {"json": {"class": "logging.StreamHandler", "stream": stream}},
        "loggers": {"myapp": {}}})
    handler = logging.StreamHandler(stream)
    logging.getLogger(EVENTS_LOGGER).addHandler(handler)
    try:
        logger.info("kept")
    finally:
        logging.getLogger(EVENTS_LOGGER).removeHandler(handler)
        for name in logging.Logger.manager.loggerDict:
            if name.startswith("ragmon"):
                logging.getLogger(name).disabled = False
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == delivered
