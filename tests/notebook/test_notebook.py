"""The course notebook runs headless, top to bottom, and leaves no process behind.

The notebook is executed with nbclient on a kernel that runs this interpreter (the venv's python),
through a kernelspec written to a temporary directory: a user-level "python3" kernelspec that
points at some other Python cannot hijack the run. Every check cell in the notebook asserts its
section's outcome, so a failing step fails this test with that cell's traceback.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "M2_3_Production_Monitoring_Dashboard.ipynb"
SECTIONS = 10
CELL_TIMEOUT = 240  # seconds per cell; generous, so only a hung cell trips it
PID_LOG_ENV = "RAGMON_NOTEBOOK_PID_LOG"
WORKDIR_ENV = "RAGMON_NOTEBOOK_WORKDIR"


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def kernel_manager(tmp_path: Path) -> KernelManager:
    """A KernelManager whose kernel is `sys.executable -m ipykernel_launcher`."""
    spec_dir = tmp_path / "kernels" / "ragmon-notebook-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "workspace venv", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return KernelManager(kernel_name="ragmon-notebook-test", kernel_spec_manager=specs)


def owned_pids(pid_log: Path) -> list[dict]:
    if not pid_log.exists():
        return []
    return [json.loads(line) for line in pid_log.read_text().splitlines() if line.strip()]


def survivors(entries: list[dict]) -> list[psutil.Process]:
    """Entries whose process (same PID *and* start time, so not a reused PID) is still running."""
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


def reap(procs: list[psutil.Process]) -> None:
    """Test hygiene only: stop by PID what the kernel failed to stop, after recording the failure."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, still = psutil.wait_procs(procs, timeout=5)
    for proc in still:
        proc.kill()


def wait_gone(entries: list[dict], timeout: float = 10.0) -> list[psutil.Process]:
    """Survivors after giving the kernel's atexit cleanup up to `timeout` s to finish."""
    deadline = time.monotonic() + timeout
    left = survivors(entries)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = survivors(entries)
    return left


def run_notebook(nb, tmp_path: Path, monkeypatch) -> tuple[list[dict], list[dict], Exception | None]:
    """Executes `nb` cell by cell. Returns (pid-log entries, descendants of the kernel seen
    just before it was shut down, the CellExecutionError if a cell failed)."""
    pid_log = tmp_path / "notebook_pids.jsonl"
    monkeypatch.setenv(PID_LOG_ENV, str(pid_log))
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    km = kernel_manager(tmp_path)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(ROOT)}})
    failure: Exception | None = None
    descendants: list[dict] = []
    # cleanup_kc: nbclient leaves a kernel it did not create running; this one must be shut
    # down gracefully, as Jupyter does, so the notebook's atexit cleanup gets its chance.
    with client.setup_kernel(cleanup_kc=True):
        kernel = psutil.Process(km.provisioner.process.pid)
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
        except CellExecutionError as exc:
            failure = exc
        finally:
            for proc in kernel.children(recursive=True):
                try:
                    descendants.append({"pid": proc.pid, "create_time": proc.create_time(),
                                        "name": " ".join(proc.cmdline()[:4])})
                except psutil.NoSuchProcess:
                    pass
    return owned_pids(pid_log), descendants, failure


# --- static checks (fast) ----------------------------------------------------------------------

def test_notebook_is_committed_without_outputs():
    nb = read_notebook()
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"code cells {dirty} of {NOTEBOOK.name} carry outputs or execution counts; "
                       "clear them before committing (Jupyter: Edit > Clear Outputs of All Cells, "
                       "or `jupyter nbconvert --clear-output --inplace` on the notebook)")


def test_every_section_has_an_explanation_code_and_a_check_cell():
    nb = read_notebook()
    sections: dict[int, list] = {}
    current = None
    for cell in nb.cells:
        heading = re.match(r"##\s+(\d+)\.", cell.source) if cell.cell_type == "markdown" else None
        if heading:
            current = int(heading.group(1))
            sections[current] = [cell]
        elif current is not None:
            sections[current].append(cell)
    assert sorted(sections) == list(range(1, SECTIONS + 1)), \
        f"expected sections '## 1.' to '## {SECTIONS}.' in order; found {sorted(sections)}"
    for number, cells in sections.items():
        code = [c for c in cells if c.cell_type == "code"]
        checks = [c for c in code if c.source.lstrip().startswith("# Check") and "assert" in c.source]
        assert len(cells[0].source.splitlines()) > 1 or any(
            c.cell_type == "markdown" for c in cells[1:]), f"section {number} has no explanation"
        assert len(code) > len(checks), f"section {number} has no runnable cell besides its check"
        assert checks, f"section {number} has no check cell (a code cell starting '# Check' that asserts)"


# --- executed -----------------------------------------------------------------------------------

def test_notebook_runs_top_to_bottom_and_stops_everything_it_started(tmp_path, monkeypatch):
    nb = read_notebook()
    started = time.monotonic()
    owned, descendants, failure = run_notebook(nb, tmp_path, monkeypatch)
    elapsed = time.monotonic() - started
    left = wait_gone(owned + descendants)
    reap(left)
    executed = tmp_path / "executed.ipynb"  # with outputs, for reading what went wrong
    nbformat.write(nb, executed)
    if failure is not None:
        pytest.fail(f"a notebook cell failed after {elapsed:.0f} s (all outputs: {executed}):\n"
                    f"{failure}", pytrace=False)
    assert owned, "the notebook recorded no process; the process registry is not in use"
    assert not descendants, ("processes were still running under the kernel after the last cell "
                             f"(the cleanup section should have stopped them): {descendants}")
    assert not left, f"processes survived the notebook: {[p.pid for p in left]}"
    print(f"notebook executed in {elapsed:.1f} s")


def test_processes_are_stopped_when_a_cell_fails_midway(tmp_path, monkeypatch):
    """The same registry the notebook uses: a cell raises after starting a process; shutting the
    kernel down (as nbclient, Jupyter's restart and `make test` do) must stop that process."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(textwrap.dedent("""\
            import sys
            from ragmon.course import Processes
            procs = Processes()
            sleeper = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"],
                                  log_path="%s")
            """) % (tmp_path / "sleeper.log")),
        nbformat.v4.new_code_cell("raise RuntimeError('a cell failed midway')"),
        nbformat.v4.new_code_cell("procs.stop_all()  # never reached"),
    ]
    owned, descendants, failure = run_notebook(nb, tmp_path, monkeypatch)
    assert isinstance(failure, CellExecutionError) and "failed midway" in str(failure)
    assert [e["name"] for e in owned] == ["sleeper"]
    assert any(d["pid"] == owned[0]["pid"] for d in descendants), "the sleeper was not running"
    left = wait_gone(owned)
    reap(left)
    assert not left, "the kernel's atexit cleanup did not stop the process started before the failure"


# --- the notebook's helpers (fast) -------------------------------------------------------------

def test_grafana_variables_are_substituted_like_grafana_does():
    from ragmon.course import substitute
    expr = 'sum(rate(x{job=~"$job",svc=~"${service}"}[$__rate_interval])) / [[job]] $__range'
    out = substitute(expr, {"job": ".*", "service": ["a.b", "c"]}, step=5, scrape_interval=15,
                     range_seconds=600)
    # $__rate_interval = max(step + scrape, 4 * scrape); lists become an escaped alternation
    assert out == r'sum(rate(x{job=~".*",svc=~"a\.b|c"}[1m])) / .* 10m'
    with pytest.raises(KeyError, match=r"\$nope.*templating"):
        substitute("up{job=~\"$nope\"}", {}, step=1, scrape_interval=1, range_seconds=60)


def test_the_dashboard_preview_reads_every_panel_of_the_shipped_dashboard():
    from ragmon.course import dashboard_variables, iter_panels, legend, load_dashboard, panel_queries
    dashboard = load_dashboard(ROOT / "grafana_dash.json")
    panels = [p for p in iter_panels(dashboard) if p.get("type") not in ("row", "text")]
    assert len(panels) >= 10 and all(panel_queries(p) for p in panels)
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in panels)
    variables = dashboard_variables(dashboard)  # without Prometheus: "All" variables become .*
    assert variables.get("job") == ".*", variables
    assert legend("{{job}} p95", {"job": "rag-service"}) == "rag-service p95"


def test_a_file_that_is_not_a_dashboard_is_refused_with_a_clear_error(tmp_path):
    from ragmon.course import load_dashboard
    bad = tmp_path / "not_a_dashboard.json"
    bad.write_text('{"title": "x"}')
    with pytest.raises(ValueError, match="no 'panels' list.*Grafana dashboard JSON"):
        load_dashboard(bad)


def test_format_value_prints_grafana_units():
    from ragmon.course import format_value
    assert format_value(0.25, "s") == "250 ms"
    assert format_value(1.5, "s") == "1.50 s"
    assert format_value(0.053, "percentunit") == "5.30%"
    assert format_value(12.5, "currencyUSD", 2) == "$12.50"
    assert format_value(float("nan"), "short") == "no data"
