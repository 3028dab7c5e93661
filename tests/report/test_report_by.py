"""report --by KEY: exact spend, tokens, queries, p95 latency and quality per attribution value,
from the JSONL files and the Parquet history; every other report path keeps working on records
that carry attribution."""
from __future__ import annotations

import csv
import io
import json
import math
import random

import numpy as np
import pytest

from m2_3_report import build_report, load_records
from ragmon.report.attribution import report_by
from ragmon.report.cli import main
from ragmon.report.compact import compact_logs
from tests.report.test_report import NOW, rec, write_records

DAY = 86400


def attributed_records(n: int, tenants: int, *, ago: float = 120.0, seed: int = 3,
                       start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tenant = f"t{min(int(rng.paretovariate(1.2)), tenants) - 1}"
        r = rec(start + i, total=rng.uniform(0.1, 4.0), ago=ago + i,
                cost=round(rng.uniform(0.0001, 0.02), 6), tokens=(rng.randint(10, 900),
                                                                   rng.randint(1, 200), 0),
                relevance=rng.choice([None, rng.random()]),
                status="error" if rng.random() < 0.05 else "success",
                attribution=None if i % 10 == 0 else {"tenant": tenant,
                                                      "feature": f"f{i % 3}"})
        if r["attribution"] is None:
            del r["attribution"]
        out.append(r)
    return out


def expected(records, key):
    groups: dict = {}
    for r in records:
        value = (r.get("attribution") or {}).get(key)
        groups.setdefault(value, []).append(r)

    def figures(rows):
        return {"queries": len(rows), "spend": math.fsum(r["cost"] or 0 for r in rows),
                "input": sum(r["tokens"]["input"] for r in rows),
                "errors": sum(r["status"] == "error" for r in rows),
                "p95": float(np.percentile([r["total_time"] for r in rows], 95)),
                "relevance": (np.mean(rel) if (rel := [r["relevance_score"] for r in rows
                                                      if r["relevance_score"] is not None])
                              else None)}
    return {value: figures(rows) for value, rows in groups.items()}, figures(records)


def check(report, records, key):
    want, total = expected(records, key)
    got = {row["value"]: row for row in report["values"]}
    assert report["distinct_values"] == len([v for v in want if v is not None])
    for value, row in got.items():
        w = want[value]
        assert row["queries"] == w["queries"] and row["errors"] == w["errors"]
        assert row["spend"] == pytest.approx(w["spend"], abs=1e-9)
        assert row["tokens"]["input"] == w["input"]
        assert row["p95_latency"] == pytest.approx(w["p95"], rel=1e-9)
        assert (row["relevance"] is None) == (w["relevance"] is None)
        if w["relevance"] is not None:
            assert row["relevance"] == pytest.approx(w["relevance"])
    listed = sorted(got.values(), key=lambda r: -r["spend"])
    assert [r["value"] for r in report["values"]] == [r["value"] for r in listed]
    parts = [*report["values"], report["rest"], report["without_key"]]
    assert sum(p["queries"] for p in parts) == total["queries"] == report["total"]["queries"]
    assert round(math.fsum(p["spend"] for p in parts), 2) == round(total["spend"], 2)
    assert math.fsum(p["spend"] for p in parts) == pytest.approx(total["spend"], abs=1e-9)
    assert report["total"]["p95_latency"] == pytest.approx(total["p95"], rel=1e-9)
    assert report["without_key"]["queries"] == len(want.get(None, {"queries": 0}) and
                                                  [r for r in records if "attribution" not in r])
    rest = [r for r in records if (r.get("attribution") or {}).get(key) is not None
            and r["attribution"][key] not in got]
    assert report["rest"]["queries"] == len(rest)
    if rest:
        assert report["rest"]["p95_latency"] == pytest.approx(
            float(np.percentile([r["total_time"] for r in rest], 95)), rel=1e-9)


def test_report_by_tenant_is_exact_from_jsonl_and_from_the_history(tmp_path):
    old = attributed_records(3000, 400, ago=2 * DAY, seed=1)
    new = attributed_records(2000, 400, ago=300, seed=2, start=5000)
    write_records(tmp_path, old + new)
    since = NOW - 3 * DAY
    for key in ("tenant", "feature"):
        check(report_by(tmp_path, key, since=since, top=15), old + new, key)
    [result] = compact_logs(tmp_path, now=NOW)
    assert result.records == 3000
    for key in ("tenant", "feature"):
        check(report_by(tmp_path, key, since=since, top=15), old + new, key)
    # A period: only the history's day.
    check(report_by(tmp_path, "tenant", since=since, until=NOW - DAY, top=5), old, "tenant")


def test_history_written_before_the_attribution_column_is_read_from_extra(tmp_path):
    import pyarrow.parquet as pq
    records = attributed_records(500, 50, ago=2 * DAY)
    write_records(tmp_path, records)
    compact_logs(tmp_path, now=NOW)
    [part] = tmp_path.glob("history/day=*/records.parquet")
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["attribution"]), part)  # as an older compaction wrote it
    check(report_by(tmp_path, "tenant", since=NOW - 3 * DAY, top=10), records, "tenant")


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_formats_and_period_checks(tmp_path):
    records = attributed_records(800, 60)
    write_records(tmp_path, records)
    code, out, err = run_cli("report", "--by", "tenant", "--hours", 2, "--log-dir", tmp_path,
                             "--format", "json", "--top", 0)
    assert code == 0, err
    report = json.loads(out)
    check(report, records, "tenant")
    assert len(report["values"]) == report["distinct_values"]  # --top 0: every value
    code, out, _ = run_cli("report", "--by", "tenant", "--hours", 2, "--log-dir", tmp_path)
    assert code == 0 and "Who spends it, by tenant" in out and "total" in out
    heaviest = report["values"][0]["value"]
    assert out.splitlines()[6].startswith(heaviest + " ")
    code, out, _ = run_cli("report", "--by", "tenant", "--hours", 2, "--log-dir", tmp_path,
                           "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == report["distinct_values"]
    assert math.fsum(float(r["spend"]) for r in rows) == pytest.approx(
        math.fsum(v["spend"] for v in report["values"]))
    code, out, _ = run_cli("report", "--by", "tenant", "--hours", 2, "--log-dir", tmp_path,
                           "--format", "html")
    assert code == 0 and "<h2 id=\"who-spends-it\">Who spends it</h2>" in out
    assert run_cli("report", "--by", "Tenant!", "--log-dir", tmp_path)[0] == 2
    code, _, err = run_cli("report", "--since", "2026-12-01", "--log-dir", tmp_path)
    assert code == 2 and "--by" in err
    code, _, err = run_cli("report", "--by", "tenant", "--since", "yesterday", "--log-dir", tmp_path)
    assert code == 2 and "'yesterday'" in err
    code, out, _ = run_cli("report", "--by", "team", "--hours", 2, "--log-dir", tmp_path)
    assert code == 0 and "0 distinct values" in out and "(no team)" in out


def test_plain_report_html_page_and_records_keep_working_with_the_field(tmp_path, settings):
    records = attributed_records(300, 20)
    # a foreign writer's odd attribution: not an object
    records.append(rec(9999, ago=100, attribution="acme"))
    write_records(tmp_path, records)
    df = load_records(tmp_path, settings=settings)
    assert len(df) == len(records)
    report = build_report(df, settings)
    assert report["totals"]["requests"] == len(records)
    code, out, err = run_cli("report", "--hours", 2, "--log-dir", tmp_path, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["requests"] == len(records)
    code, out, err = run_cli("report", "--hours", 2, "--log-dir", tmp_path, "--format", "html")
    assert code == 0, err
    assert "Who spends it" in out and "By tenant" in out and "By feature" in out
    code, out, err = run_cli("report", "--hours", 2, "--log-dir", tmp_path, "--format", "html",
                             "--exact")
    export = tmp_path / "out.jsonl"
    assert run_cli("export", "--output", export, "--hours", 2, "--log-dir", tmp_path)[0] == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert {json.dumps(r.get("attribution"), sort_keys=True) for r in lines} == {
        json.dumps(r.get("attribution"), sort_keys=True) for r in records}
