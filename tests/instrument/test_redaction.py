"""Secrets never reach log lines, request records, printouts or files others can read."""
import json
import os

import pytest

from ragmon.checks import MAX_TEXT_LENGTH, TRUNCATED
from ragmon.instrument import redaction
from ragmon.instrument.jsonlog import StructuredLogger
from ragmon.instrument.redaction import redact
from ragmon.instrument.records import DailyFileSink, make_record
from ragmon.settings import describe
from tests.conftest import make_settings
from tests.instrument.secret_samples import HARMLESS, SECRET_FIELDS, SECRETS

@pytest.fixture
def file_logger(tmp_path):
    settings = make_settings(LOG_DESTINATION="file", LOG_DIR=tmp_path)
    logger = StructuredLogger("svc", settings=settings)
    return logger, tmp_path / "app.jsonl"


@pytest.mark.parametrize("kind,text,secret", SECRETS, ids=[s[0] for s in SECRETS])
def test_each_kind_of_secret_is_redacted_from_log_lines_error_messages_and_records(
        file_logger, tmp_path, kind, text, secret):
    logger, path = file_logger
    logger.info("event", note=text, nested={"deeper": [text]})
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        logger.log_error(exc, context={"detail": text})
    written = path.read_text()
    assert secret not in written and "[REDACTED]" in written
    sink = DailyFileSink(tmp_path / "records")
    sink.write(make_record(request_id="r", service="s", env="development", operation="op",
                           model="m", status="success", error_type=None, start_time=0.0,
                           total_time=1.0, stages={"retrieval": {"duration": 0.1, "metadata": {"q": text}}},
                           attributes={"note": text}), at=1.0)
    record_text = next((tmp_path / "records").iterdir()).read_text()
    assert secret not in record_text and "[REDACTED]" in record_text


def test_fields_named_as_secrets_are_redacted_whatever_their_value(file_logger):
    logger, path = file_logger
    logger.info("login", **SECRET_FIELDS, tokens={"input": 5}, max_tokens=100)
    fields = json.loads(path.read_text())["fields"]
    assert all(fields[name] == "[REDACTED]" for name in SECRET_FIELDS)
    assert fields["tokens"] == {"input": 5} and fields["max_tokens"] == 100


@pytest.mark.parametrize("text", HARMLESS)
def test_ids_hashes_and_counts_are_not_mistaken_for_secrets(file_logger, text):
    logger, path = file_logger
    logger.info("event", note=text)
    assert json.loads(path.read_text())["fields"]["note"] == text


def test_the_log_file_is_created_0640_whatever_the_umask(file_logger):
    logger, path = file_logger
    old = os.umask(0)
    try:
        logger.info("event")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_printed_settings_hide_every_secret():
    settings = make_settings(ALERT_WEBHOOK_URL="http://127.0.0.1:5001/hook?token=s3cr3t-webhook",
                             SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T/B/slacksecret",
                             PAGERDUTY_ROUTING_KEY="pdsecret", SMTP_USERNAME="smtpuser",
                             SMTP_PASSWORD="smtpsecret", LOG_HASH_KEY="hashsecret")
    printed = json.dumps(describe(settings))
    for secret in ("s3cr3t-webhook", "slacksecret", "pdsecret", "smtpuser", "smtpsecret", "hashsecret"):
        assert secret not in printed


def test_log_error_hides_the_query_an_email_and_an_ssn_in_message_traceback_and_context(file_logger):
    logger, path = file_logger
    query = "what is the balance of account 7 for my wife"
    try:
        raise ValueError(f"no answer for {query!r} (contact bob@example.org, ssn 078-05-1120)")
    except ValueError as exc:
        logger.log_error(exc, context={"query": query, "user_id": "user-4711",
                                       "note": "from bob@example.org, ssn 078-05-1120"})
    written = path.read_text()
    for private in (query, "bob@example.org", "078-05-1120", "user-4711"):
        assert private not in written
    fields = json.loads(written)["fields"]
    assert fields["context"]["query_hash"] == logger.hash(query)
    assert fields["context"]["query_length"] == len(query)
    assert f"[query {logger.hash(query)}]" in fields["message"]
    assert f"[query {logger.hash(query)}]" in fields["traceback"]


def test_log_error_keeps_the_query_in_raw_text_mode_but_still_redacts_secrets(tmp_path):
    logger = StructuredLogger("svc", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=tmp_path),
                              raw_text=True)
    try:
        raise ValueError("bad key sk-proj-abcdefghijklmnop1234")
    except ValueError as exc:
        logger.log_error(exc, context={"query": "why is the sky blue"})
    fields = json.loads((tmp_path / "app.jsonl").read_text())["fields"]
    assert fields["context"]["query"] == "why is the sky blue"
    assert "sk-proj-abcdefghijklmnop1234" not in json.dumps(fields)


# Inputs that made a backtracking pattern rescan the rest of a run from each of its positions.
ADVERSARIAL = {
    "letters": "a", "jwt prefixes": "eyJ-", "url scheme characters": "ab+", "digits and spaces": "1 ",
    "e-mail local parts": "a.b@", "hex": "0123456789abcdef", "base64": "Ab0/", "plus signs": "+1 ",
    "dashes": "1-", "key words": "password ", "schemes": "token ", "dots": "a.",
}


@pytest.mark.parametrize("unit", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_a_long_string_is_cut_before_it_is_searched(monkeypatch, unit):
    searched = []
    real = redaction._matches
    monkeypatch.setattr(redaction, "_matches", lambda text, end: searched.append(end) or real(text, end))
    text = unit * (2**20 // len(unit))
    out = redaction.redact_text(text)
    assert len(out) <= MAX_TEXT_LENGTH and out.endswith(TRUNCATED)
    assert searched and max(searched) <= MAX_TEXT_LENGTH + redaction.CUT_MARGIN


@pytest.mark.parametrize("unit", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_megabytes_finish_through_redact_scrub_and_the_logger(file_logger, unit):
    """On a pattern that backtracks, each of these takes minutes (64 KiB of them took seconds)."""
    logger, path = file_logger
    text = unit * (2**20 // len(unit))
    assert len(redact(text)) >= len(text) // 2  # the whole megabyte, searched once
    logger.info("event", note=text)
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        logger.log_error(exc, context={"detail": text})
    record = make_record(request_id="r", service="s", env="development", operation="op",
                         model="m", status="success", error_type=None, start_time=0.0,
                         total_time=1.0, stages={}, attributes={"note": text})
    assert len(record["attributes"]["note"]) <= MAX_TEXT_LENGTH
    for line in path.read_text().splitlines():
        assert all(len(value) <= MAX_TEXT_LENGTH for value in json.loads(line)["fields"].values()
                   if isinstance(value, str))


def test_a_secret_across_the_cut_is_redacted_whole():
    keep = MAX_TEXT_LENGTH - len(TRUNCATED)
    secret = "sk-proj-" + "k" * 64
    text = "x " * (keep // 2 - 10) + secret + " tail" * 20_000
    out = redaction.redact_text(text)
    assert "sk-proj-" not in out and "kkkkkkkk" not in out and out.endswith("[REDACTED]" + TRUNCATED)
