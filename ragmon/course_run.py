"""Executing the course notebook headless: `make notebook-run` and tests/notebook share this.

The notebook is stored executed, with its outputs, so it reads like a finished course before
anything is installed. `python -m ragmon.course_run` re-executes it in place: cell by cell with
nbclient, on a kernel that runs this interpreter (through a kernelspec written to a temporary
directory, so a user-level "python3" kernelspec pointing at another Python cannot take over).

Freshness: after a successful run the notebook's metadata gets the SHA-256 of every code cell's
source (``metadata.ragmon.code_cells_sha256``). A code cell edited since then no longer matches
its hash, and tests/notebook says which cell and how to refresh the outputs.

Processes: the notebook's process registry (``ragmon.course.Processes``) appends every PID it
owns to the file named by ``RAGMON_NOTEBOOK_PID_LOG``; `execute()` also records the kernel's
descendants just before shutting it down, so a caller can prove that nothing survived.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

NOTEBOOK_NAME = "M2_3_Production_Monitoring_Dashboard.ipynb"
METADATA_KEY = "ragmon"
PID_LOG_ENV = "RAGMON_NOTEBOOK_PID_LOG"
WORKDIR_ENV = "RAGMON_NOTEBOOK_WORKDIR"
CELL_TIMEOUT = 240  # seconds per cell; generous, so only a hung cell trips it
KERNEL_NAME = "ragmon-course"


def default_notebook() -> Path:
    from .stack.render import find_workspace
    return find_workspace() / NOTEBOOK_NAME


def code_cells_sha256(nb) -> list[str]:
    """The SHA-256 of each code cell's source, in order (what the outputs were made from)."""
    return [hashlib.sha256(cell.source.encode("utf-8")).hexdigest()
            for cell in nb.cells if cell.cell_type == "code"]


def stale_cells(nb) -> list[int]:
    """Indexes (among all cells) of code cells whose source differs from the one executed last;
    every code cell when the notebook carries no record of an execution."""
    recorded = (nb.metadata.get(METADATA_KEY) or {}).get("code_cells_sha256") or []
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    now = code_cells_sha256(nb)
    if len(recorded) != len(now):
        return code
    return [i for i, old, new in zip(code, recorded, now) if old != new]


@dataclass
class Execution:
    """What one run left behind: the PIDs the notebook owned, the kernel's descendants seen just
    before shutdown, the failure (a CellExecutionError) if a cell raised, and the wall time."""
    owned: list[dict] = field(default_factory=list)
    descendants: list[dict] = field(default_factory=list)
    failure: Exception | None = None
    seconds: float = 0.0


def kernel_manager(spec_root: Path):
    """A KernelManager whose kernel is `sys.executable -m ipykernel_launcher`."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = Path(spec_root) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "workspace venv", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The kernel inherits this process's environment: set `values` for its launch only."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def owned_pids(pid_log: Path) -> list[dict]:
    if not pid_log.exists():
        return []
    return [json.loads(line) for line in pid_log.read_text().splitlines() if line.strip()]


def execute(nb, scratch: Path, *, cwd: Path | None = None, cell_timeout: float = CELL_TIMEOUT) -> Execution:
    """Runs every cell of `nb` (a NotebookNode, updated in place with the outputs).

    scratch: a directory for the kernelspec, the PID log and the notebook's WORKDIR.
    Stops at the first failing cell; the kernel is then shut down gracefully, as Jupyter does,
    so the notebook's atexit cleanup stops what it started.
    """
    import psutil
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    cwd = Path(cwd) if cwd is not None else default_notebook().parent
    pid_log = scratch / "notebook_pids.jsonl"
    result = Execution()
    started = time.monotonic()
    env = {PID_LOG_ENV: str(pid_log), WORKDIR_ENV: str(scratch / "work"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    with _environment(env):
        km = kernel_manager(scratch)
        client = NotebookClient(nb, km=km, timeout=cell_timeout, startup_timeout=120, record_timing=False,
                                resources={"metadata": {"path": str(cwd)}})
        # cleanup_kc: nbclient leaves a kernel it did not create running; this one must be shut
        # down gracefully so the notebook's atexit cleanup gets its chance.
        with client.setup_kernel(cleanup_kc=True):
            kernel = psutil.Process(km.provisioner.process.pid)
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except CellExecutionError as exc:
                result.failure = exc
            finally:
                for proc in kernel.children(recursive=True):
                    try:
                        result.descendants.append({"pid": proc.pid, "create_time": proc.create_time(),
                                                   "name": " ".join(proc.cmdline()[:4])})
                    except psutil.NoSuchProcess:
                        pass
    result.owned = owned_pids(pid_log)
    result.seconds = time.monotonic() - started
    return result


def stamp(nb, execution: Execution) -> None:
    """Records in the notebook's metadata which code the outputs were made from."""
    nb.metadata[METADATA_KEY] = {
        "code_cells_sha256": code_cells_sha256(nb),
        "executed_seconds": round(execution.seconds),
        "refresh": "make notebook-run",
    }
    # The run used a temporary kernelspec; the stored notebook keeps the standard one.
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}


def survivors(entries: list[dict]):
    """Entries whose process (same PID *and* start time, so not a reused PID) is still running."""
    import psutil
    alive = []
    for entry in entries:
        try:
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["create_time"]) < 0.01 \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(entries: list[dict], timeout: float = 10.0):
    """Survivors after giving the kernel's atexit cleanup up to `timeout` s to finish."""
    deadline = time.monotonic() + timeout
    left = survivors(entries)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = survivors(entries)
    return left


def reap(procs) -> None:
    """Stops by PID what the kernel failed to stop (after the caller has reported it)."""
    import psutil
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, still = psutil.wait_procs(procs, timeout=5)
    for proc in still:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(
        prog="python -m ragmon.course_run",
        description="Execute the course notebook headless and store it with its outputs.")
    parser.add_argument("notebook", nargs="?", type=Path, default=None,
                        help=f"the notebook (default: {NOTEBOOK_NAME} of the workspace)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the executed notebook (default: in place)")
    args = parser.parse_args(argv)
    source = (args.notebook or default_notebook()).resolve()
    target = (args.output or source).resolve()
    nb = nbformat.read(source, as_version=4)
    with tempfile.TemporaryDirectory(prefix="ragmon_course_run_") as scratch:
        execution = execute(nb, Path(scratch), cwd=source.parent)
        left = wait_gone(execution.owned + execution.descendants)
        reap(left)
        if execution.failure is not None:
            failed = target.with_suffix(".failed.ipynb")
            nbformat.write(nb, failed)
            print(f"a cell failed after {execution.seconds:.0f} s; {target.name} is unchanged, the "
                  f"partial run is in {failed}:\n{execution.failure}", file=sys.stderr)
            return 1
    if left:
        print(f"processes survived the notebook and were stopped: {[p.pid for p in left]}",
              file=sys.stderr)
        return 1
    stamp(nb, execution)
    nbformat.validate(nb)
    nbformat.write(nb, target)
    size = target.stat().st_size
    print(f"executed {source.name} in {execution.seconds:.0f} s; wrote {target} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
