"""Settings for ragmon, read once from the environment and `.env`, or given in code.

Every tunable lives here, with a comment saying when to change it. Values come from, in order of
precedence: ``ragmon.configure(...)`` in code, real environment variables, a `.env` file
(python-dotenv) in the current directory, then the defaults below. Keys of the environment or of
`.env` that are not ragmon settings are ignored, so a service's own `.env` can hold anything.
A bad value raises ``ConfigError`` naming the variable, the value and the expected form.

python-dotenv is imported only when a `.env` file exists, so importing the instrumentation
library costs nothing beyond the standard library and prometheus_client.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
# The price database shipped in the package: a snapshot of genai-prices (see
# ragmon.instrument.price_database for its version and how to regenerate it).
SHIPPED_PRICES_FILE = PACKAGE_DIR / "price_database.json"
PRICE_DATABASES = ("auto", "genai-prices", "shipped", "none")
ENVIRONMENTS = ("development", "staging", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_DESTINATIONS = ("stderr", "file", "none")


class ConfigError(ValueError):
    """A setting has a value we cannot use. The message says which, what and how to fix it."""


@dataclass(frozen=True)
class Settings:
    # --- metrics endpoint -------------------------------------------------------------------
    # Change the port when 8000 is taken; change the address to 0.0.0.0 only when Prometheus
    # runs on another host (or in Docker without host networking) and the port is firewalled.
    METRICS_PORT: int = 8000
    METRICS_ADDR: str = "127.0.0.1"
    SERVICE_NAME: str = "rag-service"
    ENV: str = "development"

    # --- cost -------------------------------------------------------------------------------
    # Prices in dollars per 1K tokens for models neither MODEL_PRICES_FILE nor the price
    # database knows. Set them to your main model's list price so unknown models are not free.
    COST_PER_1K_INPUT_TOKENS: float = 0.003
    COST_PER_1K_OUTPUT_TOKENS: float = 0.015
    COST_PER_1K_CACHED_INPUT_TOKENS: float = 0.0003
    # Your own prices, which win over the database: negotiated prices, private or local models.
    # JSON file {"model": {"input": .., "output": .., "cached_input": ..}} (per 1K tokens).
    # Empty: none.
    MODEL_PRICES_FILE: str = ""
    # Where list prices come from: genai-prices when installed (pip install 'ragmon[prices]'),
    # else the snapshot of it shipped in the package (auto); only one of them; or none (only
    # MODEL_PRICES_FILE and the defaults).
    PRICE_DATABASE: str = "auto"

    # --- logs and request records -----------------------------------------------------------
    LOG_DIR: str = "./logs"
    LOG_LEVEL: str = "INFO"
    # Where StructuredLogger lines go: stderr (containers, cloud log agents), a file
    # LOG_DIR/app.jsonl, or nowhere.
    LOG_DESTINATION: str = "stderr"
    # Where the one-record-per-query JSON goes: daily files LOG_DIR/YYYYMMDD_performance.jsonl
    # (read by m2_3_report.py), stderr, or nowhere (cheapest).
    REQUEST_LOG_DESTINATION: str = "file"
    # Raw query text and user ids in logs. Leave off unless you have consent and a retention
    # policy: by default they are written as a keyed hash and a length.
    LOG_RAW_TEXT: bool = False
    # Key for hashing user ids and queries. Set it to correlate hashes across restarts; empty
    # means a random key per process, so hashes cannot be compared between runs.
    LOG_HASH_KEY: str = ""

    # --- cardinality --------------------------------------------------------------------------
    # Distinct values any one label may take before new values become "__other__". Raise it
    # only if you know the label is bounded (e.g. many models); memory grows with it.
    MAX_LABEL_VALUES: int = 100
    # Per-metric overrides, e.g. "rag_errors_total=50,rag_tokens_total=200".
    LABEL_LIMITS: Mapping[str, int] = field(default_factory=dict)
    # Label combinations (series) any one metric may expose before new combinations have their
    # caller-chosen labels recorded as "__other__". Prometheus guidance: under 1,000 per metric.
    MAX_SERIES_PER_METRIC: int = 1000
    # The same for histograms, lower because each combination is ~18 series (buckets, sum,
    # count): 250 keeps the worst case of every histogram under ~4,500 series per scrape.
    MAX_SERIES_PER_HISTOGRAM: int = 250
    # Per-metric series budgets, the one place to change them: "rag_stage_duration_seconds=2000".
    SERIES_LIMITS: Mapping[str, int] = field(default_factory=dict)

    # --- answer quality (record_scores, record_feedback) --------------------------------------
    # Distinct score names (relevance_score and context_precision included) before a new name is
    # refused and counted: a score name is a label, so a name per user or per query must not pass.
    MAX_SCORE_NAMES: int = 20
    # Distinct feedback reasons counted by name; later new reasons are counted as "other".
    MAX_FEEDBACK_REASONS: int = 20
    # Feedback or a late score for a request that ended longer ago than this is refused as too_old.
    FEEDBACK_MAX_AGE_HOURS: float = 168.0

    # --- request analysis (PerformanceMonitor, m2_3_report.py) ------------------------------
    SLOW_QUERY_SECONDS: float = 5.0
    VERY_SLOW_QUERY_SECONDS: float = 30.0
    # A stage is a bottleneck when it takes more than this share of its request's time...
    BOTTLENECK_SHARE: float = 0.5
    # ...or more than its own budget in seconds, e.g. "retrieval=1.0,generation=5.0".
    STAGE_BUDGETS: Mapping[str, float] = field(default_factory=dict)
    LOG_RETENTION_DAYS: int = 30

    # --- OpenTelemetry (docs/opentelemetry.md) ----------------------------------------------
    # Also export GenAI semantic-convention metrics and spans over OTLP/HTTP, beside the
    # Prometheus metrics (which stay as they are). Needs `pip install 'ragmon[otel]'`. Off: no
    # OpenTelemetry package is imported.
    OTEL_ENABLED: bool = False
    # Where to send them: the Collector's OTLP/HTTP base URL (/v1/metrics and /v1/traces are
    # added). Empty: the exporter's own defaults (OTEL_EXPORTER_OTLP_* variables, else
    # http://localhost:4318). The standard OTEL_* variables (headers, timeout, export interval,
    # temporality, resource attributes) are honoured as usual.
    OTEL_EXPORTER_OTLP_ENDPOINT: str = ""

    # --- local monitoring stack (m2_3_stack.py, docker compose) -----------------------------
    PROMETHEUS_PORT: int = 9090
    ALERTMANAGER_PORT: int = 9093
    PUSHGATEWAY_PORT: int = 9091
    NODE_EXPORTER_PORT: int = 9100
    GRAFANA_PORT: int = 3000
    STACK_DIR: str = "./.stack"
    # Alert receivers (alertmanager.yml). Each stays out of the rendered Alertmanager config until
    # its settings are set: ALERT_WEBHOOK_URL replaces the shipped webhook URL; Slack goes to the
    # page and ticket routes, PagerDuty to page only, email to both and needs TO, FROM and SMARTHOST.
    ALERT_WEBHOOK_URL: str = ""
    # Sent as "Authorization: Bearer" from a mode-600 file, never in the URL: Alertmanager shows
    # webhook URLs in clear on its status page, so a URL with ?token= is refused.
    ALERT_WEBHOOK_TOKEN: str = ""
    # Heartbeat URL for the always-firing RagWatchdog alert (the receiver "deadmans-switch"): a
    # service such as healthchecks.io that pages when the pings stop. Empty: the local webhook.
    DEADMANS_SWITCH_URL: str = ""
    DEADMANS_SWITCH_TOKEN: str = ""
    SLACK_WEBHOOK_URL: str = ""
    SLACK_CHANNEL: str = ""
    PAGERDUTY_ROUTING_KEY: str = ""
    ALERT_EMAIL_TO: str = ""
    ALERT_EMAIL_FROM: str = ""
    SMTP_SMARTHOST: str = ""
    SMTP_USERNAME: str = ""
    SMTP_PASSWORD: str = ""

    @property
    def log_dir(self) -> Path:
        return Path(self.LOG_DIR).expanduser()

    def label_limit(self, metric_name: str) -> int:
        return self.LABEL_LIMITS.get(metric_name, self.MAX_LABEL_VALUES)

    def series_limit(self, metric_name: str, histogram: bool = False) -> int:
        default = min(self.MAX_SERIES_PER_METRIC, self.MAX_SERIES_PER_HISTOGRAM) if histogram \
            else self.MAX_SERIES_PER_METRIC
        return self.SERIES_LIMITS.get(metric_name, default)


# --- parsing ---------------------------------------------------------------------------------

def _int_in(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number; expected an integer "
                              f"from {lo} to {hi}, e.g. {name}={lo if lo > 0 else 1}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={raw!r} is out of range; expected an integer from {lo} to {hi}")
        return value
    return parse


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; expected a non-negative decimal "
                          f"such as {name}=0.003") from None
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number >= 0; set it to a price or "
                          "threshold such as 0.003")
    return value


def _positive_float(name: str, raw: str) -> float:
    value = _non_negative_float(name, raw)
    if value == 0:
        raise ConfigError(f"{name}={raw!r} must be a finite number > 0, e.g. {name}=168")
    return value


def _share(name: str, raw: str) -> float:
    value = _non_negative_float(name, raw)
    if not 0 < value <= 1:
        raise ConfigError(f"{name}={raw!r} must be a fraction in (0, 1], e.g. {name}=0.5")
    return value


def _choice(options: tuple[str, ...], case: Callable[[str], str] = str.lower):
    def parse(name: str, raw: str) -> str:
        value = case(raw.strip())
        if value not in options:
            raise ConfigError(f"{name}={raw!r} is not one of {', '.join(options)}; "
                              f"set e.g. {name}={options[0]}")
        return value
    return parse


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; expected true or false")


def _address(name: str, raw: str) -> str:
    value = raw.strip()
    if value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an IP address; expected e.g. 127.0.0.1 "
                          "(loopback, the safe default) or 0.0.0.0 (all interfaces)") from None
    return value


def _text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(f"{name} is empty; give it a value or remove it to use the default")
    return value


def _any_text(name: str, raw: str) -> str:
    return raw.strip()


def _mapping(parse_value: Callable[[str, str], float | int]):
    """Parses "key=value,key=value"; an empty string is an empty mapping."""
    def parse(name: str, raw: str) -> dict:
        result = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{name}={raw!r}: item {item!r} is not key=value; "
                                  f"expected e.g. {name}=retrieval=1.0,generation=5.0")
            result[key.strip()] = parse_value(f"{name}[{key.strip()}]", value)
        return result
    return parse


_PORT = _int_in(1, 65535)
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "METRICS_PORT": _PORT,
    "METRICS_ADDR": _address,
    "SERVICE_NAME": _text,
    "ENV": _choice(ENVIRONMENTS),
    "COST_PER_1K_INPUT_TOKENS": _non_negative_float,
    "COST_PER_1K_OUTPUT_TOKENS": _non_negative_float,
    "COST_PER_1K_CACHED_INPUT_TOKENS": _non_negative_float,
    "MODEL_PRICES_FILE": _any_text,
    "PRICE_DATABASE": _choice(PRICE_DATABASES),
    "LOG_DIR": _text,
    "LOG_LEVEL": _choice(LOG_LEVELS, str.upper),
    "LOG_DESTINATION": _choice(LOG_DESTINATIONS),
    "REQUEST_LOG_DESTINATION": _choice(LOG_DESTINATIONS),
    "LOG_RAW_TEXT": _bool,
    "LOG_HASH_KEY": _any_text,
    "MAX_LABEL_VALUES": _int_in(1, 100_000),
    "LABEL_LIMITS": _mapping(_int_in(1, 100_000)),
    "MAX_SERIES_PER_METRIC": _int_in(1, 1_000_000),
    "MAX_SERIES_PER_HISTOGRAM": _int_in(1, 1_000_000),
    "SERIES_LIMITS": _mapping(_int_in(1, 1_000_000)),
    "MAX_SCORE_NAMES": _int_in(2, 1_000),
    "MAX_FEEDBACK_REASONS": _int_in(1, 1_000),
    "FEEDBACK_MAX_AGE_HOURS": _positive_float,
    "SLOW_QUERY_SECONDS": _non_negative_float,
    "VERY_SLOW_QUERY_SECONDS": _non_negative_float,
    "BOTTLENECK_SHARE": _share,
    "STAGE_BUDGETS": _mapping(_non_negative_float),
    "LOG_RETENTION_DAYS": _int_in(1, 36_500),
    "OTEL_ENABLED": _bool,
    "OTEL_EXPORTER_OTLP_ENDPOINT": _any_text,
    "PROMETHEUS_PORT": _PORT,
    "ALERTMANAGER_PORT": _PORT,
    "PUSHGATEWAY_PORT": _PORT,
    "NODE_EXPORTER_PORT": _PORT,
    "GRAFANA_PORT": _PORT,
    "STACK_DIR": _text,
    **{name: _any_text for name in ("ALERT_WEBHOOK_URL", "DEADMANS_SWITCH_URL",
                                    "ALERT_WEBHOOK_TOKEN", "DEADMANS_SWITCH_TOKEN",
                                    "SLACK_WEBHOOK_URL", "SLACK_CHANNEL",
                                    "PAGERDUTY_ROUTING_KEY", "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM",
                                    "SMTP_SMARTHOST", "SMTP_USERNAME", "SMTP_PASSWORD")},
}
assert set(_PARSERS) == {f.name for f in fields(Settings)}, "every setting needs a parser"


def _read_dotenv(path: Path) -> dict[str, str]:
    """The values of a `.env` file. One that cannot be read, or is not UTF-8, is a ConfigError
    naming it (and the line and byte offset of the first bad byte), like a bad value in it."""
    if not path.is_file():
        return {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}; fix its permissions "
                          "or remove it") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"(line {line}) cannot be decoded; save the file as UTF-8") from None
    import io
    from dotenv import dotenv_values  # only paid for when a .env exists
    return {key: value for key, value in dotenv_values(stream=io.StringIO(text)).items()
            if value is not None}


def _warn_misspelled(dotenv: Mapping[str, str], path) -> None:
    """A `.env` key that is almost a setting's name is a typo that would silently do nothing."""
    import difflib
    import logging
    for key in dotenv:
        if key in _PARSERS:
            continue
        close = difflib.get_close_matches(key.upper(), _PARSERS, n=1, cutoff=0.8)
        if close:
            logging.getLogger("ragmon").warning(
                "%s sets %s, which is not a ragmon setting and is ignored; did you mean %s?",
                path, key, close[0])


def load_settings(environ: Mapping[str, str] | None = None,
                  dotenv_path: str | os.PathLike | None = None) -> Settings:
    """Builds Settings from `environ` (default: os.environ) over a `.env` file.

    `dotenv_path` defaults to `.env` in the current directory.
    """
    if dotenv_path is None:
        dotenv_path = Path.cwd() / ".env"
    dotenv = _read_dotenv(Path(dotenv_path))
    _warn_misspelled(dotenv, dotenv_path)
    source = {**dotenv, **(os.environ if environ is None else environ)}
    values = {name: parse(name, source[name]) for name, parse in _PARSERS.items() if name in source}
    return _checked(Settings(**values))


def _checked(settings: Settings) -> Settings:
    if settings.VERY_SLOW_QUERY_SECONDS < settings.SLOW_QUERY_SECONDS:
        raise ConfigError(f"VERY_SLOW_QUERY_SECONDS={settings.VERY_SLOW_QUERY_SECONDS} is below "
                          f"SLOW_QUERY_SECONDS={settings.SLOW_QUERY_SECONDS}; it must be at least as large")
    return settings


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings: those given to ``configure()``, else loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def make_settings(**values: object) -> Settings:
    """Settings from Python values (no environment, no `.env`): ``make_settings(LOG_DIR="/var/log/rag")``.

    Each value is checked as its environment variable would be; strings are parsed the same way,
    so ``LABEL_LIMITS="rag_errors_total=50"`` and ``LABEL_LIMITS={"rag_errors_total": 50}`` agree.
    """
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; expected names such as LOG_DIR, "
                          "METRICS_PORT (see .env.example for all of them)")
    parsed = {}
    for name, value in values.items():
        if isinstance(value, Mapping):
            value = ",".join(f"{key}={item}" for key, item in value.items())
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (str, int, float)):
            raise ConfigError(f"{name}={value!r} has type {type(value).__name__}; expected a "
                              "string, number or (for mappings) a dict")
        parsed[name] = _PARSERS[name](name, str(value))
    return _checked(Settings(**parsed))


def set_settings(settings: Settings | None) -> None:
    """Makes `settings` the process-wide settings (None: load them again on next use)."""
    global _cached
    if settings is not None and not isinstance(settings, Settings):
        raise TypeError(f"settings={settings!r} is not a ragmon Settings; build one with "
                        "ragmon.make_settings(...) or load_settings()")
    _cached = settings


def check_startup(settings: Settings) -> Settings:
    """Validates, once, what the settings point at: the price database is loaded and the price
    file is read and checked. Servers
    and command-line tools call it before they start, so a broken file stops them with a clear
    error naming it instead of being discovered (and re-read) on every query. Raises ConfigError."""
    from .instrument.price_database import load_database
    try:
        load_database(settings.PRICE_DATABASE)  # read once per process, shared with the metrics
    except (OSError, ValueError) as exc:
        raise ConfigError(f"PRICE_DATABASE={settings.PRICE_DATABASE!r} cannot be used: {exc}") from None
    if settings.MODEL_PRICES_FILE:
        from .instrument.pricing import PriceTable
        try:
            PriceTable.from_settings(settings)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"MODEL_PRICES_FILE={settings.MODEL_PRICES_FILE!r} cannot be used: "
                              f"{exc}. Fix the file, point MODEL_PRICES_FILE at another one, or "
                              "set it empty to use only the price database and the COST_PER_1K_* "
                              "defaults") from None
    return settings


def settings_for_cli() -> Settings:
    """get_settings() for command-line tools, checked with check_startup(): a bad setting or
    price file ends the program with its message (exit status 2) instead of a traceback."""
    import sys
    try:
        return check_startup(get_settings())
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# Printed as "(set)" / "(not set)" only: webhook URLs carry their token in the path.
_SECRETS = ("ALERT_WEBHOOK_URL", "DEADMANS_SWITCH_URL", "ALERT_WEBHOOK_TOKEN",
            "DEADMANS_SWITCH_TOKEN", "SLACK_WEBHOOK_URL",
            "PAGERDUTY_ROUTING_KEY", "SMTP_USERNAME", "SMTP_PASSWORD")


def describe(settings: Settings) -> dict[str, object]:
    """The settings in force as plain JSON-able values, secrets masked."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "LOG_HASH_KEY":
            value = "(set)" if value else "(random per process)"
        elif f.name in _SECRETS:
            value = "(set)" if value else "(not set)"
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


if __name__ == "__main__":
    print(json.dumps(describe(get_settings()), indent=2))
