"""Values of the wrong shape in a record: read as missing and counted, the same on every path
(the fast typed scan, the report, exports), and a writer's own top-level keys survive
compaction."""
from __future__ import annotations

import json

import pytest

from m2_3_report import load_records
from ragmon.instrument.records import log_file_name
from ragmon.report.compact import compact_logs
from ragmon.report.reader import iter_records
from ragmon.report.summary import report_from_log
from tests.conftest import make_settings
from tests.report.test_report import NOW, rec, write_records

DAY = 86400


def write_lines(log_dir, records, at=NOW):
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / log_file_name(at), "ab") as f:
        for record in records:
            f.write(json.dumps(record).encode() + b"\n")


@pytest.mark.parametrize("stages", [[1, 2], "retrieval", 5, True])
def test_non_object_stages_are_read_as_no_stages_and_counted(tmp_path, stages):
    good = rec(1, ago=120)
    odd = {"start_time": NOW - 61, "total_time": 1.0, "request_id": "odd", "cost": 0.25,
           "stages": stages}
    write_lines(tmp_path, [good, odd])
    df = load_records(tmp_path, 1, settings=make_settings(), now=NOW)
    assert sorted(df["request_id"]) == ["odd", "req-1"]
    assert df.attrs["read_stats"]["bad_values"] == 1
    assert df.attrs["read_stats"]["skipped_lines"] == 0
    assert df.set_index("request_id")["stage_retrieval"].isna().to_dict() == {"req-1": False,
                                                                            "odd": True}
    report = report_from_log(tmp_path, make_settings(), hours=1, now=NOW)
    assert report["totals"]["requests"] == 2 and report["read"]["bad_values"] == 1
    assert report["cost"]["total"] == pytest.approx(0.25 + good["cost"])
    assert {s["stage"]: s["requests"] for s in report["stages"]}["retrieval"] == 1
    exported = {r["request_id"]: r for r in iter_records(tmp_path)}
    assert set(exported) == {"odd", "req-1"}


def test_a_number_written_as_a_string_is_counted_as_the_wrong_type(tmp_path):
    odd = rec(2, ago=60, cost=None)
    odd["cost"] = "0.5"
    odd["tokens"]["input"] = "12"
    odd["relevance_score"] = "0.9"
    write_lines(tmp_path, [rec(1, ago=120), odd])
    df = load_records(tmp_path, 1, settings=make_settings(), now=NOW).set_index("request_id")
    assert df.attrs["read_stats"]["bad_values"] == 3
    assert df["cost"].isna().to_dict() == {"req-1": False, "req-2": True}
    assert df.loc["req-2", "input_tokens"] == 0 and df["relevance_score"].isna()["req-2"]
    report = report_from_log(tmp_path, make_settings(), hours=1, now=NOW)
    assert report["read"]["bad_values"] == 3
    assert report["cost"]["requests_without_cost"] == 1


def test_compaction_keeps_a_writers_own_top_level_keys(tmp_path):
    mine = rec(1, ago=2 * DAY)
    mine.update({"tenant": "acme", "experiment": {"arm": "b", "ids": [1, 2]}, "weird/key~": 1})
    plain = rec(2, ago=2 * DAY + 60)
    write_records(tmp_path, [mine, plain])
    before = {r["request_id"]: r for r in iter_records(tmp_path)}
    assert before["req-1"]["experiment"] == {"arm": "b", "ids": [1, 2]}
    [result] = compact_logs(tmp_path, now=NOW)
    assert result.records == 2 and len(result.compacted) == 1
    after = {r["request_id"]: r for r in iter_records(tmp_path)}
    assert after["req-1"]["tenant"] == "acme"
    assert after["req-1"]["experiment"] == {"arm": "b", "ids": [1, 2]}
    assert after["req-1"]["weird/key~"] == 1
    assert "tenant" not in after["req-2"]
    assert after == before
