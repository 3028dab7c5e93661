import json
import os
import time

from m2_3_monitoring import DailyFileSink, configure_request_log, monitored_query
from ragmon.instrument import runtime as instrument
from ragmon.instrument.records import LOG_FILE_GLOB, log_file_name, make_record


def record(n=0):
    return make_record(request_id=f"r{n}", service="s", env="development", operation="op", model="m",
                       status="success", error_type=None, start_time=1_700_000_000.0, total_time=0.5,
                       stages={"retrieval": {"duration": 0.1, "metadata": {}}})


def test_records_go_to_daily_files_named_by_utc_date(tmp_path):
    sink = DailyFileSink(tmp_path)
    day1 = time.mktime((2026, 11, 20, 23, 59, 0, 0, 0, 0)) - time.timezone
    sink.write(record(1), at=day1)
    sink.write(record(2), at=day1 + 120)
    sink.close()
    assert sorted(p.name for p in tmp_path.glob(LOG_FILE_GLOB)) == ["20261120_performance.jsonl",
                                                                    "20261121_performance.jsonl"]
    assert json.loads((tmp_path / "20261121_performance.jsonl").read_text())["request_id"] == "r2"


def test_each_record_is_one_complete_line(tmp_path):
    sink = DailyFileSink(tmp_path)
    for n in range(50):
        sink.write(record(n))
    sink.close()
    [path] = tmp_path.glob(LOG_FILE_GLOB)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{n}" for n in range(50)]


def test_record_format_has_the_documented_keys():
    r = record()
    assert {"request_id", "start_time", "total_time", "timestamp", "stages", "status", "error_type",
            "operation", "model", "tokens", "cost", "relevance_score", "context_precision",
            "attributes"} <= set(r)
    assert r["timestamp"] == "2023-11-14T22:13:20.500000+00:00"
    assert log_file_name(1_700_000_000) == "20231114_performance.jsonl"


def test_configure_request_log_switches_destinations(tmp_path, metrics):
    previous = instrument.STATE.request_log
    try:
        sink = configure_request_log("file", tmp_path)
        assert isinstance(sink, DailyFileSink)

        @monitored_query(operation="op", metrics=metrics)
        def work():
            return 1

        work()
        sink.close()
        assert len(list(tmp_path.glob(LOG_FILE_GLOB))) == 1
        assert configure_request_log("none") is None
    finally:
        instrument.STATE.request_log = previous


def test_file_permissions_are_not_world_readable(tmp_path):
    sink = DailyFileSink(tmp_path)
    sink.write(record())
    sink.close()
    [path] = tmp_path.glob(LOG_FILE_GLOB)
    assert os.stat(path).st_mode & 0o007 == 0


def test_the_json_fallback_writes_null_for_non_finite_numbers():
    from ragmon.instrument.records import _json_dumps
    line = _json_dumps({"cost": float("nan"), "nested": {"x": float("inf")}, "ok": 1.5})
    assert json.loads(line) == {"cost": None, "nested": {"x": None}, "ok": 1.5}
    assert b"NaN" not in line and b"Infinity" not in line


def test_queries_ending_either_side_of_midnight_go_to_their_own_files(tmp_path):
    sink = DailyFileSink(tmp_path)
    midnight = 20_000 * 86400.0
    for n, at in enumerate((midnight - 1, midnight + 1, midnight - 0.5, midnight + 2)):
        sink.write(record(n), at=at)
    sink.close()
    before = (tmp_path / log_file_name(midnight - 1)).read_text().splitlines()
    after = (tmp_path / log_file_name(midnight + 1)).read_text().splitlines()
    assert [json.loads(l)["request_id"] for l in before] == ["r0", "r2"]
    assert [json.loads(l)["request_id"] for l in after] == ["r1", "r3"]


def test_a_late_record_for_an_old_day_is_written_to_that_day(tmp_path):
    sink = DailyFileSink(tmp_path)
    today = 20_000 * 86400.0 + 3600
    for n, at in enumerate((today, today + 86400, today - 5 * 86400, today + 86400)):
        sink.write(record(n), at=at)
    sink.close()
    counts = {p.name: len(p.read_text().splitlines()) for p in tmp_path.glob(LOG_FILE_GLOB)}
    assert counts == {log_file_name(today): 1, log_file_name(today + 86400): 2,
                      log_file_name(today - 5 * 86400): 1}
