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

# (kind, text that carries the secret, the secret itself)
SECRETS = [
    ("openai key", "calling with sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
    ("aws access key id", "id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("aws temporary key id", "id ASIAY34FZKBOKMUTVV7A used", "ASIAY34FZKBOKMUTVV7A"),
    ("aws secret key", "secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("bare jwt", "got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
    ("basic auth", "Authorization: Basic dXNlcjpodW50ZXIyMjI=", "dXNlcjpodW50ZXIyMjI="),
    ("bearer token", "Authorization: Bearer abcdefghijklmnopqrstuvwx", "abcdefghijklmnopqrstuvwx"),
    ("password in url", "connecting to postgres://app:hunter2secret@db.internal:5432/rag", "hunter2secret"),
    ("slack webhook", "posting to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX",
     "T0000/B0000/XXXXXXXXXXXXXXXX"),
    ("pagerduty key", "routing_key: 0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("json-quoted password", 'body {"password": "hunter22", "user": "a"}', "hunter22"),
    ("password pair", "login password=hunter22 ok", "hunter22"),
    ("card number", "paid with 4111 1111 1111 1111 today", "4111 1111 1111 1111"),
    ("card number without spaces", "card=5500005555555559", "5500005555555559"),
    ("e-mail address", "reply to alice.smith+rag@mail.example.co.uk today", "alice.smith+rag@mail.example.co.uk"),
    ("international phone number", "call +1 (415) 555-2671 now", "555-2671"),
    ("phone number", "call 415-555-2671 now", "415-555-2671"),
    ("bracketed phone number", "call (415) 555-2671 now", "555-2671"),
    ("us social security number", "ssn 078-05-1120 on file", "078-05-1120"),
    ("bare pagerduty key", "paging e93facc04764012d7bfb002500d5d1a6 failed", "e93facc04764012d7bfb002500d5d1a6"),
    ("upper-case password pair", "DB_PASSWORD=hunter22 set", "hunter22"),
]
# field name -> value: the name alone says it is secret
SECRET_FIELDS = {"password": "p4ss", "api_key": "k3y", "token": "t0k", "db_password": "pw",
                 "Authorization": "Basic xyz", "cookie": "session=abc", "client_secret": "cs",
                 "aws_secret_access_key": "sak"}
HARMLESS = ["request 3fa85f6457174562b3fc2c963f66afa6", "commit 356a192b7913b04c54574d18c28d46e6395428ab",
            "order 4111 1111 1111 1112", "tokens: 500", "token_type=input",
            "ended 2026-11-21T10:00:01.234567+00:00", "took +0.00012345 s", "sizes 128 256 1024",
            "epoch 1795255201.123", "version 1.2.3 of pkg@1.2.3", "user @alice said hi",
            "id 3fa85f64-5717-4562-b3fc-2c963f66afa6"]


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
