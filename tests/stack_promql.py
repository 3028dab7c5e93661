"""Helpers for the rule, dashboard and contract tests: just enough PromQL reading to find the
metric names, label names, range selectors and functions an expression uses.

Not a PromQL parser: it relies on the expressions being well formed (promtool checks that) and
handles what our files use: selectors with label matchers, ranges, aggregations with by/without,
vector matching with on/ignoring/group_left/group_right, string literals and Grafana variables.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

WORKSPACE = Path(__file__).resolve().parent.parent
RULE_FILES = [WORKSPACE / "recording_rules.yml", WORKSPACE / "alert_rules.yml"]
DASHBOARD = WORKSPACE / "grafana_dash.json"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
RANGE_FUNCTIONS = {"rate", "increase", "irate"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def rules(paths=RULE_FILES) -> list[dict]:
    """Every rule of the shipped rule files, each with its group name added as "_group"."""
    out = []
    for path in paths:
        for group in load_yaml(path)["groups"]:
            out.extend(dict(rule, _group=group["name"]) for rule in group["rules"])
    return out


def alert_rules() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def recording_rules() -> list[dict]:
    return [rule for rule in rules() if "record" in rule]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(board: dict | None = None) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    board = dashboard() if board is None else board
    out = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_targets(board: dict | None = None) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in dashboard_panels(board) for target in panel.get("targets", [])]


def substitute(expr: str, rate_interval: str = "1m", variables: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced: $__rate_interval, $__range, and $name / ${name} (default .*)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__range", "1h").replace("$__interval", rate_interval)
    variables = variables or {}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), ".*"), expr)


def _strip(expr: str) -> str:
    expr = _STRING.sub('""', expr)
    expr = _MATCHERS.sub(" ", expr)
    expr = _RANGE.sub(" ", expr)
    return _GROUPING.sub(" ", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names (and recording-rule names) the expression selects."""
    expr = _strip(substitute(expr))
    names = set()
    for match in _IDENT.finditer(expr):
        name = match.group(1)
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: matcher value}) of every selector written with a metric name."""
    expr = substitute(expr)
    out = []
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}", expr):
        labels = {name: value for name, _op, value in
                  re.findall(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(2))}
        out.append((match.group(1), labels))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_left/group_right clauses."""
    labels = set()
    for _keyword, inside in _GROUPING.findall(_STRING.sub('""', substitute(expr))):
        labels.update(part.strip() for part in inside.split(",") if part.strip())
    return labels


def range_windows(expr: str) -> list[str]:
    """The text inside every [...] of the (unsubstituted) expression."""
    return [m[1:-1] for m in _RANGE.findall(_STRING.sub('""', expr))]


def enclosing_function(expr: str, position: int) -> str | None:
    """Name of the innermost function call whose parentheses enclose `position`."""
    depth = 0
    for index in range(position - 1, -1, -1):
        char = expr[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                head = re.search(r"([a-zA-Z_]\w*)\s*$", expr[:index])
                if head is None:
                    return None  # a plain parenthesis
                name = head.group(1)
                if name in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                    depth = 0
                    continue
                return name
            depth -= 1
    return None


def counters_outside_rate(expr: str) -> list[str]:
    """Counter samples (…_total, …_bucket, …_sum, …_count) not read through rate/increase/irate
    over a range: a raw counter only ever goes up and resets on restart, so graphing or comparing
    it directly is wrong."""
    clean = _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    problems = []
    for match in _IDENT.finditer(clean):
        name = match.group(1)
        if ":" in name or not name.endswith(COUNTER_SUFFIXES):
            continue
        rest = clean[match.end():].lstrip()
        if rest.startswith("("):
            continue
        if rest.startswith("{"):
            rest = rest[rest.index("}") + 1:].lstrip()
        function = enclosing_function(clean, match.start())
        if not rest.startswith("[") or function not in RANGE_FUNCTIONS:
            problems.append(name)
    return problems


def parse_duration(text: str) -> float:
    """Prometheus duration ("1h30m", "90s", "2d") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)
