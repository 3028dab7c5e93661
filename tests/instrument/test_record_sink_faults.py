"""Fault injection for the record sink: every record is written whole or counted as lost.

The full-disk and read-only cases mount a small tmpfs, which needs root: outside CI they skip
when not root; under CI=true they fail, because CI must run them.
"""
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ragmon.instrument.catalog import RAGMetrics
from ragmon import monitored_query
from ragmon.instrument.records import DailyFileSink, log_file_name, make_record
from tests.conftest import make_settings

DAY = 86400
T0 = 1_795_219_200.0  # a UTC midnight


def record(n: int, size: int = 0) -> dict:
    return make_record(request_id=f"r{n}", service="s", env="development", operation="op",
                       model="m", status="success", error_type=None, start_time=T0,
                       total_time=0.1, stages={}, attributes={"pad": "p" * size} if size else None)


def read_lines(path: Path) -> tuple[list[dict], int]:
    """(records that parse, torn lines)."""
    good, torn = [], 0
    if not path.exists():
        return good, torn
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            good.append(json.loads(line))
        except ValueError:
            torn += 1
    return good, torn


def test_three_days_at_once_under_eight_threads_write_every_record_to_its_own_file(tmp_path):
    """Records for three days at once make the sink close a day's file while other threads
    still write: no write may go through a closed (and reused) descriptor."""
    log_dir, app_dir = tmp_path / "logs", tmp_path / "app"
    app_dir.mkdir()
    sink = DailyFileSink(log_dir)
    per_thread, threads_n = 1500, 8
    sent_per_day = [[0, 0, 0] for _ in range(threads_n)]
    errors = []
    stop = threading.Event()

    def writer(index: int):
        rng = random.Random(index)
        for n in range(per_thread):
            day = rng.randrange(3)
            try:
                sink.write(record(index * per_thread + n), at=T0 + day * DAY + 10)
                sent_per_day[index][day] += 1
            except OSError as exc:
                errors.append(exc)

    def application():  # opens and closes its own files all along: freed descriptors get reused
        n = 0
        while not stop.is_set():
            path = app_dir / f"file{n % 50}.txt"
            with open(path, "a") as f:
                f.write("app\n")
            n += 1

    app = threading.Thread(target=application)
    app.start()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    app.join()
    sink.close()

    assert errors == []
    assert (sink.written, sink.lost) == (threads_n * per_thread, 0)
    for day in range(3):
        good, torn = read_lines(log_dir / log_file_name(T0 + day * DAY))
        assert torn == 0 and len(good) == sum(counts[day] for counts in sent_per_day)
    for path in app_dir.iterdir():
        assert set(path.read_text().splitlines()) == {"app"}, f"a record was written into {path}"


def test_a_deleted_log_directory_is_recreated_and_nothing_is_lost(tmp_path):
    log_dir = tmp_path / "logs"
    sink = DailyFileSink(log_dir)
    for n in range(10):
        sink.write(record(n), at=T0)
    shutil.rmtree(log_dir)
    log_dir.mkdir()  # `rm -rf $LOG_DIR; mkdir $LOG_DIR`
    for n in range(10, 110):
        sink.write(record(n), at=T0)
    shutil.rmtree(log_dir)  # and without the mkdir
    for n in range(110, 210):
        sink.write(record(n), at=T0)
    good, torn = read_lines(log_dir / log_file_name(T0))
    assert torn == 0 and [r["request_id"] for r in good] == [f"r{n}" for n in range(110, 210)]
    assert (sink.written, sink.lost) == (210, 0)


def test_a_rotated_log_file_is_reopened_at_once_when_the_path_is_checked_every_write(tmp_path):
    sink = DailyFileSink(tmp_path, path_check_interval=0)
    sink.write(record(0), at=T0)
    path = tmp_path / log_file_name(T0)
    path.rename(tmp_path / "rotated.jsonl")  # logrotate's move-and-create
    sink.write(record(1), at=T0)
    assert [r["request_id"] for r in read_lines(path)[0]] == ["r1"]
    assert [r["request_id"] for r in read_lines(tmp_path / "rotated.jsonl")[0]] == ["r0"]


def test_records_written_before_the_path_check_land_whole_in_the_rotated_file(tmp_path):
    sink = DailyFileSink(tmp_path, path_check_interval=3600)
    sink.write(record(0), at=T0)
    path = tmp_path / log_file_name(T0)
    path.rename(tmp_path / "rotated.jsonl")
    for n in range(1, 5):
        sink.write(record(n), at=T0)
    good, torn = read_lines(tmp_path / "rotated.jsonl")
    assert torn == 0 and [r["request_id"] for r in good] == [f"r{n}" for n in range(5)]
    assert not path.exists() and (sink.written, sink.lost) == (5, 0)


def test_a_rotated_log_file_is_reopened_once_the_check_interval_has_passed(tmp_path):
    sink = DailyFileSink(tmp_path, path_check_interval=0.05)
    sink.write(record(0), at=T0)
    path = tmp_path / log_file_name(T0)
    path.rename(tmp_path / "rotated.jsonl")
    sink.write(record(1), at=T0)  # to either file, depending on the time since the last check
    time.sleep(0.06)
    sink.write(record(2), at=T0)
    rotated = [r["request_id"] for r in read_lines(tmp_path / "rotated.jsonl")[0]]
    current = [r["request_id"] for r in read_lines(path)[0]]
    assert current[-1:] == ["r2"] and sorted(rotated + current) == ["r0", "r1", "r2"]


def test_a_deleted_log_file_is_noticed_at_the_next_write_whatever_the_check_interval(tmp_path):
    """Deletion empties the open file's link count, read on every write: no record written
    after it goes into the void, however long the path check waits."""
    sink = DailyFileSink(tmp_path, path_check_interval=3600)
    path = tmp_path / log_file_name(T0)
    sink.write(record(0), at=T0)
    path.unlink()
    sink.write(record(1), at=T0)
    assert [r["request_id"] for r in read_lines(path)[0]] == ["r1"]
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b'{"request_id":"x"}\n')
    os.replace(replacement, path)  # another file takes the path: the open one has no name left
    sink.write(record(2), at=T0)
    assert [r["request_id"] for r in read_lines(path)[0]] == ["x", "r2"]
    assert (sink.written, sink.lost) == (3, 0)


def test_a_deletion_is_noticed_at_the_next_write_after_the_directory_was_quiet_a_while(tmp_path):
    """A directory whose times are two seconds old stands for its files until it changes: deleting
    the file, or the whole directory, must still be noticed at the very next write."""
    log_dir = tmp_path / "logs"
    path = log_dir / log_file_name(T0)
    sink = DailyFileSink(log_dir, path_check_interval=3600)
    sink.write(record(0), at=T0)
    time.sleep(2.1)
    sink.write(record(1), at=T0)
    assert sink._dir_stamp is not None  # the quiet directory is trusted: the case under test
    path.unlink()
    sink.write(record(2), at=T0)
    assert [r["request_id"] for r in read_lines(path)[0]] == ["r2"]
    time.sleep(2.1)
    sink.write(record(3), at=T0)
    assert sink._dir_stamp is not None
    shutil.rmtree(log_dir)
    sink.write(record(4), at=T0)
    assert [r["request_id"] for r in read_lines(path)[0]] == ["r4"]
    assert (sink.written, sink.lost) == (5, 0)


@pytest.mark.parametrize("interval", [-1, float("nan"), float("inf"), "1", None])
def test_a_bad_path_check_interval_is_refused_with_the_value(tmp_path, interval):
    with pytest.raises(ValueError, match="path_check_interval"):
        DailyFileSink(tmp_path, path_check_interval=interval)


def test_a_read_only_directory_counts_every_record_as_lost_and_the_host_is_unaffected(tmpfs):
    log_dir = tmpfs("64k", read_only=True)
    sink = DailyFileSink(log_dir)
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings())

    @monitored_query("op", metrics=metrics, request_log=sink)
    def query(n):
        return {"n": n}

    results = [query(n) for n in range(50)]
    assert results == [{"n": n} for n in range(50)]
    assert (sink.written, sink.lost) == (0, 50)
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total",
                                             {"reason": "record_write"}) == 50


def test_a_full_disk_loses_only_counted_records_and_fences_the_cut_off_line(tmpfs):
    log_dir = tmpfs("64k")
    filler = log_dir / "filler"
    filler.write_bytes(b"f" * 16_384)
    sink = DailyFileSink(log_dir)
    sent = 0
    for n in range(60):  # ~1.6 KB each: the disk fills part-way through a record
        sent += 1
        try:
            sink.write(record(n, size=1500), at=T0)
        except OSError:
            pass
    assert sink.lost > 0 and sink.written + sink.lost == sent
    path = log_dir / log_file_name(T0)
    good, torn = read_lines(path)
    assert len(good) == sink.written and torn == 1  # the one cut-off record, counted as lost
    filler.unlink()  # space comes back
    for n in range(1000, 1005):
        sent += 1
        sink.write(record(n), at=T0)
    good, torn = read_lines(path)
    assert sink.written + sink.lost == sent
    assert len(good) == sink.written and torn == 1  # the next record did not glue onto the cut
    assert [r["request_id"] for r in good[-5:]] == [f"r{n}" for n in range(1000, 1005)]


def test_a_file_ending_in_a_cut_off_line_is_fenced_when_opened(tmp_path):
    path = tmp_path / log_file_name(T0)
    path.write_bytes(b'{"request_id":"r0","tot')  # a crash mid-record, in an earlier process
    sink = DailyFileSink(tmp_path)
    sink.write(record(1), at=T0)
    good, torn = read_lines(path)
    assert [r["request_id"] for r in good] == ["r1"] and torn == 1


def test_records_are_not_world_readable(tmp_path):
    sink = DailyFileSink(tmp_path)
    old = os.umask(0)
    try:
        sink.write(record(0), at=T0)
    finally:
        os.umask(old)
    assert (tmp_path / log_file_name(T0)).stat().st_mode & 0o777 == 0o640


# --- the structured logger's app.jsonl ---------------------------------------------------------------

def file_logger(log_dir):
    from ragmon.instrument.jsonlog import StructuredLogger
    return StructuredLogger("svc", settings=make_settings(LOG_DESTINATION="file", LOG_DIR=log_dir))


def test_the_logger_recreates_a_deleted_log_directory(tmp_path):
    log_dir = tmp_path / "logs"
    logger = file_logger(log_dir)
    logger.info("before")
    shutil.rmtree(log_dir)
    for n in range(20):
        logger.info("after", n=n)
    lines = [json.loads(line) for line in (log_dir / "app.jsonl").read_text().splitlines()]
    assert [line["fields"]["n"] for line in lines] == list(range(20))


def test_the_logger_on_a_read_only_directory_counts_and_keeps_the_host_running(tmpfs, capfd):
    log_dir = tmpfs("64k", read_only=True)
    logger = file_logger(log_dir)
    for n in range(30):
        logger.info("event", n=n)  # raises nothing
    handler = logger._logger.handlers[0]
    assert handler.lost == 30
    assert "Traceback" not in capfd.readouterr().err
