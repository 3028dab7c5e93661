"""The log at scale: several directories, Parquet history (compact, killed midway), cleanup of
both, hostile logs (deep nesting, over-long lines, symlinks, tiny buckets)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from m2_3_report import build_report, export_records, load_records
from ragmon.report import reader
from ragmon.report.compact import compact_logs
from ragmon.report.retention import cleanup_logs
from ragmon.instrument.records import encode, log_file_name
from tests.report.test_report import NOW, rec, write_records
from tests.report.test_report_cli import run

DAY = 86400


def days_of_records(log_dir: Path, days: int, per_day: int, prefix: str = "") -> list[str]:
    records = [rec(d * per_day + n, ago=(d + 2) * DAY + n, attributes={"host": prefix or "a"})
               for d in range(days) for n in range(per_day)]
    for r in records:
        r["request_id"] = prefix + r["request_id"]
    write_records(log_dir, records)
    return [r["request_id"] for r in records]


def test_two_hosts_directories_make_one_report(tmp_path, settings):
    a = days_of_records(tmp_path / "host-a", 1, 5, "a-")
    b = days_of_records(tmp_path / "host-b", 1, 7, "b-")
    df = load_records([tmp_path / "host-a", tmp_path / "host-b"], settings=settings)
    assert sorted(df["request_id"]) == sorted(a + b)
    by_glob = load_records([str(tmp_path / "host-*")], settings=settings)
    assert sorted(by_glob["request_id"]) == sorted(a + b)
    proc = run("report", "--hours", 24 * 30, "--format", "json", "--log-dir",
               tmp_path / "host-a", tmp_path / "host-b")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["requests"] == 12
    proc = run("report", "--log-dir", tmp_path / "host-*x")
    assert proc.returncode == 2 and "host-*x" in proc.stderr


def test_compact_moves_past_days_to_parquet_and_reports_read_both(tmp_path, settings):
    ids = days_of_records(tmp_path, 3, 20)
    today = [rec(900 + n, ago=60) for n in range(4)]
    newest = write_records(tmp_path, today, raw_lines=[encode(rec(950))[:30]])
    old_day = tmp_path / log_file_name(NOW - 2 * DAY)
    with open(old_day, "ab") as f:
        f.write(b"not json at all\n")
    before = load_records(tmp_path, settings=settings)
    [result] = compact_logs(tmp_path, now=NOW)
    assert len(result.compacted) == 3 and result.records == 60 and result.rejected_lines == 1
    assert sorted(p.name for p in tmp_path.glob("*_performance.jsonl")) == [newest.name]
    partitions = sorted(p.name for p in (tmp_path / "history").iterdir() if p.name.startswith("day="))
    assert len(partitions) == 3
    # Any engine reads the history; the free-form parts keep their shape.
    table = pq.read_table(tmp_path / "history" / partitions[0] / "records.parquet")
    assert table.num_rows == 20 and "stage_durations" in table.column_names
    rejected = (tmp_path / "history" / partitions[-1] / "rejected.jsonl").read_bytes()
    assert rejected == b"not json at all\n"
    after = load_records(tmp_path, settings=settings)
    assert sorted(after["request_id"]) == sorted(before["request_id"]) == sorted(
        ids + [r["request_id"] for r in today])
    cols = ["request_id", "total_time", "cost", "stage_retrieval", "input_tokens"]
    left = before[cols].sort_values("request_id").reset_index(drop=True)
    right = after[cols].sort_values("request_id").reset_index(drop=True)
    assert left.equals(right)
    assert after["attr_host"].astype(str).eq("a").sum() == 60
    exported = export_records(tmp_path / "out.jsonl", tmp_path, None, settings=settings)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert exported["records"] == 64
    first = next(r for r in lines if r["request_id"] == "req-0")
    assert first["stages"]["retrieval"]["metadata"] == {"n": 0}


def _history_state(log_dir: Path) -> str:
    history = log_dir / "history"
    return " ".join(sorted(p.name for p in history.iterdir())) if history.exists() else ""


def test_compact_killed_midway_loses_and_duplicates_nothing(tmp_path, settings):
    ids = days_of_records(tmp_path, 4, 3000)
    expected = sorted(ids)
    kills = 0
    for moment in ("scratch", "partition", "scratch", "partition"):
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parents[2] / "m2_3_report.py"),
                                 "compact", "--log-dir", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = _history_state(tmp_path)
        while proc.poll() is None:
            state = _history_state(tmp_path)
            if (moment == "scratch" and ".compacting-" in state) or (
                    moment == "partition" and state.count("day=") > seen.count("day=")
                    and ".compacting-" not in state):
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait()
        got = sorted(load_records(tmp_path, settings=settings)["request_id"])
        assert got == expected, (moment, len(got), len(expected))
    assert kills >= 1
    proc = run("compact", "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.glob("*_performance.jsonl")] == [log_file_name(NOW)]
    assert _history_state(tmp_path).count("day=") == 4
    assert ".compacting-" not in _history_state(tmp_path)
    assert sorted(load_records(tmp_path, settings=settings)["request_id"]) == expected


def test_cleanup_deletes_old_parquet_days_and_nothing_else(tmp_path):
    days_of_records(tmp_path, 1, 3)
    compact_logs(tmp_path, now=NOW)
    [partition] = [p for p in (tmp_path / "history").iterdir() if p.name.startswith("day=")]
    stranger = tmp_path / "history" / "day=2001-01-01"
    stranger.mkdir()
    (stranger / "records.parquet").write_text("x")
    (stranger / "notes.txt").write_text("keep me")
    result = cleanup_logs(tmp_path, 1, now=NOW + 10 * DAY)
    assert f"history/{partition.name}" in result.deleted and not partition.exists()
    assert (stranger / "notes.txt").exists()
    assert any("day=2001-01-01" in f for f in result.failed)


def test_hostile_lines_are_skipped_and_counted(tmp_path, settings):
    good = [rec(n) for n in range(3)]
    newest = write_records(tmp_path, good, raw_lines=[b"[" * 100_000 + b"\n", encode(rec(5))])
    with open(newest, "ab") as f:
        f.write(b'{"pad": "' + b"x" * (reader.MAX_LINE_BYTES + 10) + b'"}\n')
        f.write(encode(rec(6)))
        f.write(encode(rec(7))[:-10])  # torn, at the very end
    df = load_records(tmp_path, settings=settings)
    assert sorted(df["request_id"]) == ["req-0", "req-1", "req-2", "req-5", "req-6"]
    stats = df.attrs["read_stats"]
    assert stats["skipped_by_reason"] == {"corrupt_json": 1, "line_too_long": 1, "torn_last_line": 1}
    assert f"{newest.name}:4: not valid JSON" in stats["skipped_examples"]
    assert f"{newest.name}:6: longer than 16 MiB" in stats["skipped_examples"]
    assert f"{newest.name}:8: torn last line (a write in progress or cut short)" in stats["skipped_examples"]
    assert stats["lines"] == 8
    text = build_report(df, settings)
    assert text["totals"]["requests"] == 5


def test_a_line_far_past_the_limit_is_cut_out_in_one_linear_pass(tmp_path, settings):
    # DuckDB stops at a line well past its object limit; the reader reads a copy without it.
    newest = write_records(tmp_path, [rec(1)], raw_lines=[
        b'{"pad": "' + b"y" * (3 * reader.MAX_LINE_BYTES) + b'"}\n', encode(rec(2))])
    df = load_records(tmp_path, settings=settings)
    assert sorted(df["request_id"]) == ["req-1", "req-2"]
    assert df.attrs["read_stats"]["skipped_examples"] == [f"{newest.name}:2: longer than 16 MiB"]
    assert df.attrs["read_stats"]["lines"] == 3


def test_a_torn_line_in_the_middle_is_named_with_its_line(tmp_path, settings):
    records = [rec(n) for n in range(6)]
    write_records(tmp_path, records[:3], raw_lines=[encode(rec(40))[:25] + b"\n"])
    newest = write_records(tmp_path, records[3:])
    df = load_records(tmp_path, settings=settings)
    assert len(df) == 6
    assert df.attrs["read_stats"]["skipped_examples"] == [f"{newest.name}:4: not valid JSON"]


def test_symlinks_out_of_the_log_directory_are_not_read(tmp_path, settings):
    log_dir = tmp_path / "logs"
    write_records(log_dir, [rec(1)])
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(encode(rec(666)))
    link = log_dir / log_file_name(NOW - DAY)
    link.symlink_to(outside)
    fifo = log_dir / log_file_name(NOW - 2 * DAY)
    os.mkfifo(fifo)
    df = load_records(log_dir, settings=settings)
    assert df["request_id"].tolist() == ["req-1"]
    assert sorted(df.attrs["read_stats"]["ignored_files"]) == sorted([str(link), str(fifo)])


def test_a_tiny_bucket_is_a_clear_error(tmp_path):
    write_records(tmp_path, [rec(1)])
    proc = run("stats", "--bucket", "1us", "--hours", 24, "--log-dir", tmp_path)
    assert proc.returncode == 2
    assert "--bucket '1us' cuts 24 h into more than 10,000 rows" in proc.stderr
    proc = run("stats", "--bucket", "soon", "--log-dir", tmp_path)
    assert proc.returncode == 2 and "is not a time span" in proc.stderr


def test_progress_bars_only_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import select
    import struct
    import termios

    write_records(tmp_path / "logs", [rec(n) for n in range(50)])
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real size
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parents[2] / "m2_3_report.py"),
                             "export", "--output", str(tmp_path / "out.jsonl"),
                             "--log-dir", str(tmp_path / "logs")],
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ,
                                                                      "LOG_DESTINATION": "none"})
    os.close(slave)
    proc.wait(timeout=120)
    shown = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"export" in shown and b"records" in shown  # tqdm's bar on the terminal
    piped = run("export", "--output", tmp_path / "out2.jsonl", "--log-dir", tmp_path / "logs")
    assert piped.returncode == 0 and piped.stderr == ""
