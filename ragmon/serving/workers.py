"""One set of metrics for all the workers of a pre-forking server (gunicorn, uvicorn --workers).

prometheus_client's multiprocess mode has each worker write its metrics to small mmap files in
``PROMETHEUS_MULTIPROC_DIR``; ``/metrics`` merges them (``MultiProcessCollector``). This module
adds what a production recipe needs around that:

- The directory is created and emptied when the server starts (``on_starting``): files left by
  an earlier run would be added to this run's counters.
- A dead worker's live gauges (queries in flight) are dropped at once (``mark_process_dead``),
  and its counter, histogram and other gauge files are merged into one archive file per kind,
  so totals never go down and the files of dead workers do not pile up and slow scrapes down.
  gunicorn calls ``child_exit``; without such a hook (uvicorn --workers) every scrape retires
  the files of processes that no longer exist.
- Merging and scraping take a lock file in the directory (exclusive / shared), so a scrape never
  sees a worker's counts twice or not at all.
- The hooks never raise: a monitoring failure is logged and the server boots and serves anyway.

gunicorn (see examples/gunicorn.conf.py)::

    import os
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/run/rag-service/metrics")  # before ragmon
    from ragmon.serving.workers import on_starting, post_fork, child_exit  # noqa: F401

The directory must be set in the environment before prometheus_client is first imported (it
chooses file-backed values at import), and must belong to this server alone: it is emptied.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("ragmon")

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = ".ragmon.lock"
ARCHIVE = "archive"  # stands where a worker's pid stands in a file name: counter_archive.db
# How the values of one series from several dead workers combine, by file kind. Gauges in the
# "all" modes keep one series per pid by design and cannot be merged; "live" modes are deleted.
_MERGE = {"counter": "sum", "histogram": "sum", "summary": "sum", "gauge_sum": "sum",
          "gauge_max": "max", "gauge_min": "min", "gauge_mostrecent": "mostrecent"}


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR (or its old lower-case spelling), or None when unset."""
    return os.environ.get(ENV_VAR) or os.environ.get(ENV_VAR.lower()) or None


def in_multiprocess_mode() -> bool:
    """True when this process writes its metrics to files for a multi-worker /metrics.

    The directory set after prometheus_client was imported does not count: values are then
    kept in memory, and ``/metrics`` would show one worker. That mistake is logged once.
    """
    if multiprocess_dir() is None:
        return False
    if getattr(values.ValueClass, "_multiprocess", False):
        return True
    _warn_once("late_env", "%s=%s was set after prometheus_client was imported, so this process "
               "keeps its metrics in memory and /metrics shows only this process. Set it in the "
               "environment of the server (or at the top of gunicorn.conf.py), before anything "
               "imports ragmon or prometheus_client.", ENV_VAR, multiprocess_dir())
    return False


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def prepare_multiprocess_dir(path: str | os.PathLike | None = None) -> Path:
    """Creates the directory and removes the metric files (``*.db``) of an earlier run.

    Call it once, in the server's master process, before any worker starts. Files of the
    calling process itself are kept: importing ragmon may already have opened them.
    """
    path = Path(path or multiprocess_dir() or "")
    if not str(path) or str(path) == ".":
        raise ValueError(f"{ENV_VAR} is not set; set it to a directory that belongs to this "
                         "server, e.g. /run/rag-service/metrics")
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    with _locked(path, exclusive=True):
        for stale in path.glob("*.db"):
            if not stale.name.endswith(own):
                stale.unlink()
    return path


@contextlib.contextmanager
def _locked(path: str | os.PathLike, exclusive: bool):
    import fcntl
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _kind_and_pid(file_name: str) -> tuple[str, str]:
    """("counter", "1234") for counter_1234.db, ("gauge_livesum", "1234") for gauges."""
    parts = file_name[:-len(".db")].split("_")
    return "_".join(parts[:-1]), parts[-1]


def worker_pids(path: str | os.PathLike | None = None) -> set[int]:
    """The pids that have metric files in the directory."""
    path = path or multiprocess_dir()
    pids = set()
    for name in os.listdir(path):
        if name.endswith(".db"):
            pid = _kind_and_pid(name)[1]
            if pid.isdigit():
                pids.add(int(pid))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def retire_workers(pids, path: str | os.PathLike | None = None) -> int:
    """Marks the workers `pids` dead: their live gauges go, everything else they counted is
    merged into the archive files. Returns how many of their files were merged."""
    path = str(path or multiprocess_dir())
    with _locked(path, exclusive=True):
        by_kind: dict[str, list[str]] = {}
        for pid in pids:
            mark_process_dead(pid, path)
            for file in glob.glob(os.path.join(path, f"*_{int(pid)}.db")):
                kind = _kind_and_pid(os.path.basename(file))[0]
                if kind in _MERGE:  # gauges in an "all" mode keep one series per pid: kept
                    by_kind.setdefault(kind, []).append(file)
        for kind, files in by_kind.items():
            _merge_into_archive(path, kind, files)
            for file in files:
                os.unlink(file)
    return sum(len(files) for files in by_kind.values())


def retire_dead_workers(path: str | os.PathLike | None = None) -> int:
    """Retires the files of every process that no longer exists (for servers without a
    child_exit hook). Returns how many files were merged."""
    path = path or multiprocess_dir()
    dead = {pid for pid in worker_pids(path) if pid != os.getpid() and not pid_alive(pid)}
    return retire_workers(dead, path) if dead else 0


def _merge_into_archive(path: str, kind: str, files: list[str]) -> None:
    archive = os.path.join(path, f"{kind}_{ARCHIVE}.db")
    how = _MERGE[kind]
    merged: dict[str, tuple[float, float]] = {}
    for source in [archive, *files]:
        if not os.path.exists(source):
            continue
        for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(source):
            old = merged.get(key)
            if old is None:
                merged[key] = (value, timestamp)
            elif how == "sum":
                merged[key] = (old[0] + value, 0.0)
            elif how == "max":
                merged[key] = (max(old[0], value), 0.0)
            elif how == "min":
                merged[key] = (min(old[0], value), 0.0)
            elif timestamp > old[1]:  # mostrecent
                merged[key] = (value, timestamp)
    # Written aside and renamed: a scrape that ignores the lock still sees a whole file.
    partial = os.path.join(path, f".{kind}_{ARCHIVE}.partial")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    target = MmapedDict(partial)
    try:
        for key, (value, timestamp) in merged.items():
            target.write_value(key, value, timestamp)
    finally:
        target.close()
    os.replace(partial, archive)


class WorkersCollector(MultiProcessCollector):
    """MultiProcessCollector that retires dead workers first and reads under the shared lock."""

    def collect(self):
        try:
            retire_dead_workers(self._path)
        except OSError as exc:
            _warn_once("retire", "could not retire the metric files of dead workers in %s: %s",
                       self._path, exc)
        with _locked(self._path, exclusive=False):
            families = list(super().collect())
        return fold_attributed(families)


def fold_attributed(families: list) -> list:
    """Every worker names its own heaviest attribution values: the merge keeps at most
    ATTRIBUTION_TOP_K of them per key and adds the rest into value="other" (attribution.py)."""
    try:
        from ..instrument.attribution import fold_top_k
        from ..settings import get_settings
        return fold_top_k(families, get_settings().ATTRIBUTION_TOP_K)
    except Exception as exc:  # the scrape must go on: the families as merged
        _warn_once("fold", "could not fold the attributed series of the workers: %r", exc)
        return families


def multiprocess_registry(path: str | os.PathLike | None = None) -> CollectorRegistry:
    """A registry holding every worker's metrics, merged (build one per scrape or keep one)."""
    registry = CollectorRegistry()
    WorkersCollector(registry, path=str(path or multiprocess_dir()))
    return registry


def metrics_registry() -> CollectorRegistry:
    """What /metrics should serve in this process: all workers merged in multiprocess mode,
    prometheus_client's global REGISTRY otherwise."""
    return multiprocess_registry() if in_multiprocess_mode() else REGISTRY


# --- gunicorn server hooks (import them into gunicorn.conf.py) --------------------------------

def on_starting(server) -> None:
    """Master, before any worker: creates and empties PROMETHEUS_MULTIPROC_DIR."""
    try:
        path = prepare_multiprocess_dir()
        log.info("metrics of all workers are merged from %s", path)
    except Exception as exc:
        log.error("monitoring: could not prepare %s=%r: %s. Workers will start, but /metrics may "
                  "show one worker or nothing until this is fixed.", ENV_VAR, multiprocess_dir(),
                  exc)


def post_fork(server, worker) -> None:
    """New worker, before the application is loaded: files under its pid belong to an earlier
    process that had the same pid, and would otherwise be continued (in-flight included)."""
    try:
        if multiprocess_dir() and os.getpid() in worker_pids():
            retire_workers([os.getpid()])
    except Exception as exc:
        log.error("monitoring: could not retire stale metric files for pid %d: %s",
                  os.getpid(), exc)


def child_exit(server, worker) -> None:
    """Master, after a worker exited (or was killed): drops its in-flight count at once and
    merges the rest into the archive files."""
    try:
        if multiprocess_dir():
            retire_workers([worker.pid])
    except Exception as exc:
        log.error("monitoring: could not retire the metric files of worker %s: %s",
                  worker.pid, exc)


def when_ready(server) -> None:
    """Master, once listening: serves every worker's metrics on METRICS_ADDR:METRICS_PORT from
    the master, so /metrics stays up whichever worker dies. Optional: the ASGI middleware's
    /metrics route serves the same numbers on the application's port."""
    from ..instrument.server import start_metrics_server
    try:
        start_metrics_server()
    except Exception as exc:  # a bad METRICS_PORT must not stop the server either
        log.error("monitoring: could not serve /metrics from the gunicorn master: %s", exc)

