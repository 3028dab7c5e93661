"""The course notebook is stored executed and fresh, runs headless top to bottom, and leaves no
process behind.

Execution goes through ragmon.course_run (the same code as `make notebook-run`): nbclient on a
kernel that runs this interpreter, through a kernelspec written to a temporary directory. The
executed test runs a COPY of the notebook (the committed file is never written) and fails on any
cell error, which includes every check cell. The static tests read the committed notebook: its
outputs were made from the code cells it has now (a hash per code cell, stored by
`make notebook-run`), it is small, and its outputs hold nothing that belongs to one machine.
"""
from __future__ import annotations

import base64
import re
import struct
import tempfile
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from ragmon.course_run import (METADATA_KEY, NOTEBOOK_NAME, code_cells_sha256, execute, reap,
                               stale_cells, wait_gone)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / NOTEBOOK_NAME
SECTIONS = 11
MAX_NOTEBOOK_BYTES = 2_000_000
MAX_PICTURE_PIXELS = (1600, 3200)  # width, height: 72 dpi; the whole dashboard is one tall picture


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def output_texts(nb) -> list[tuple[int, str]]:
    """(cell index, text) for every textual output of every code cell."""
    texts = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                texts.append((index, output.get("text", "")))
            for mime, value in (output.get("data") or {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    texts.append((index, value if isinstance(value, str) else str(value)))
            if output.get("output_type") == "error":
                texts.append((index, "\n".join(output.get("traceback", []))))
    return texts


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


# --- the committed notebook (fast) -------------------------------------------------------------

def test_the_committed_outputs_were_made_from_the_code_cells_it_has_now():
    nb = read_notebook()
    nbformat.validate(nb)
    stale = stale_cells(nb)
    assert not stale, (f"code cells {stale} of {NOTEBOOK.name} changed since its outputs were made; "
                       "run `make notebook-run` and commit the executed notebook")
    counts = [cell.execution_count for cell in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), \
        f"the outputs are not from one top-to-bottom run (execution counts {counts}); run `make notebook-run`"
    errors = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              and any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    assert not errors, f"cells {errors} stored an error"


def test_editing_a_code_cell_makes_the_outputs_stale():
    nb = read_notebook()
    assert nb.metadata[METADATA_KEY]["code_cells_sha256"] == code_cells_sha256(nb)
    index = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    nb.cells[index].source += "\n# edited"
    assert stale_cells(nb) == [index]
    nb.cells.insert(0, nbformat.v4.new_code_cell("print('a new cell')"))
    assert stale_cells(nb) == [i for i, c in enumerate(nb.cells) if c.cell_type == "code"], \
        "a cell added or removed makes every output suspect"
    nb.metadata.pop(METADATA_KEY)
    assert stale_cells(nb), "a notebook without a record of its run is stale"


def test_the_committed_notebook_is_small_and_its_pictures_are_at_a_sensible_size():
    size = NOTEBOOK.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{NOTEBOOK.name} is {size / 1e6:.2f} MB; keep it under 2 MB " \
                                      "(lower the figure dpi or the figure sizes)"
    for index, cell in enumerate(read_notebook().cells):
        for output in cell.get("outputs", []):
            data = (output.get("data") or {}).get("image/png")
            if data:
                width, height = png_size(data)
                assert width <= MAX_PICTURE_PIXELS[0] and height <= MAX_PICTURE_PIXELS[1], \
                    f"cell {index}: a {width}x{height} px picture; draw it at 72 dpi"


def test_every_picture_of_the_course_is_in_the_committed_outputs():
    """The dashboard, the panel beside its JSON, the alert timeline, the report's trends and the
    metric gap: each cell that draws one stored a PNG."""
    nb = read_notebook()
    drawing = {"draw_dashboard(": "the dashboard preview", "draw_panel(": "the panel beside its JSON",
               "ALERTS{": "the alert timeline", "trends_figure(": "the report's trend plots",
               "start_windows": "the metric gap"}
    for marker, picture in drawing.items():
        cells = [c for c in code_cells(nb) if marker in c.source]
        assert cells, f"no cell draws {picture} (looked for {marker!r})"
        assert any("image/png" in (o.get("data") or {}) for c in cells for o in c.get("outputs", [])), \
            f"{picture} is not in the stored outputs"


def test_the_outputs_hold_no_machine_paths_or_secrets():
    machine_specific = {str(ROOT), tempfile.gettempdir() + "/", str(Path.home()) + "/", "/home/", "/root/"}
    secrets = re.compile(r"hooks\.slack\.com/services/|sk-[A-Za-z0-9]{20}|sk-ant-|routing_key|"
                         r"(?i:password)\s*[:=]\s*\S", re.I)
    for index, text in output_texts(read_notebook()):
        for fragment in machine_specific:
            assert fragment not in text, f"cell {index} printed a path of this machine ({fragment!r})"
        assert not secrets.search(text), f"cell {index} printed something like a secret: {secrets.search(text)}"


def test_the_files_the_notebook_shows_verbatim_match_the_workspace():
    """Text printed under '# <file>, verbatim' is the file's text as committed now."""
    shown = 0
    for index, text in output_texts(read_notebook()):
        for match in re.finditer(r"^# (\S+), verbatim\n(.*?)(?=^# \S+, verbatim$|\Z)", text, re.M | re.S):
            path, excerpt = ROOT / match.group(1), match.group(2).rstrip()
            assert path.is_file(), f"cell {index} shows {match.group(1)}, which does not exist"
            assert excerpt and excerpt in path.read_text(), \
                f"cell {index} shows text that is no longer in {match.group(1)}; run `make notebook-run`"
            shown += 1
    assert shown >= 4, f"expected the alert rule, its tests and two recording rules shown whole; found {shown}"


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

def test_a_copy_of_the_notebook_runs_top_to_bottom_and_stops_everything_it_started(tmp_path):
    nb = read_notebook()  # a copy in memory: the committed file is not written
    run = execute(nb, tmp_path)
    left = wait_gone(run.owned + run.descendants)
    reap(left)
    executed = tmp_path / "executed.ipynb"  # with outputs, for reading what went wrong
    nbformat.write(nb, executed)
    if run.failure is not None:
        pytest.fail(f"a notebook cell failed after {run.seconds:.0f} s (all outputs: {executed}):\n"
                    f"{run.failure}", pytrace=False)
    assert run.owned, "the notebook recorded no process; the process registry is not in use"
    assert not run.descendants, ("processes were still running under the kernel after the last cell "
                                 f"(the cleanup section should have stopped them): {run.descendants}")
    assert not left, f"processes survived the notebook: {[p.pid for p in left]}"
    print(f"notebook executed in {run.seconds:.1f} s")


def test_processes_are_stopped_when_a_cell_fails_midway(tmp_path):
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
    run = execute(nb, tmp_path)
    assert isinstance(run.failure, CellExecutionError) and "failed midway" in str(run.failure)
    assert [e["name"] for e in run.owned] == ["sleeper"]
    assert any(d["pid"] == run.owned[0]["pid"] for d in run.descendants), "the sleeper was not running"
    left = wait_gone(run.owned)
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


def test_a_rule_is_shown_verbatim_from_its_first_line_to_the_next_rule(tmp_path):
    from ragmon.course import text_between, yaml_item
    rules = tmp_path / "rules.yml"
    rules.write_text(textwrap.dedent("""\
        groups:
          - name: g
            rules:
              - alert: First
                expr: up == 0   # a comment stays
                for: 1m

                labels:
                  severity: warning
              # about the second rule
              - alert: Second
                expr: up == 1
          - name: h
            rules: []
        """))
    assert textwrap.dedent(yaml_item(rules, "- alert: First")) == textwrap.dedent("""\
              - alert: First
                expr: up == 0   # a comment stays
                for: 1m

                labels:
                  severity: warning""")
    assert yaml_item(rules, "- alert: Second") == "      - alert: Second\n        expr: up == 1"
    assert text_between(rules, "- name: g", "- name: h").splitlines()[-1].strip() == "expr: up == 1"
    with pytest.raises(ValueError, match="'- alert: Third' is not in .*rules.yml"):
        yaml_item(rules, "- alert: Third")


def test_the_scrape_timeout_is_read_from_the_config_prometheus_runs(tmp_path):
    from ragmon.course import scrape_timeout_seconds
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1500ms\n")
    assert scrape_timeout_seconds(config) == 1.5
    config.write_text("global:\n  scrape_interval: 15s\n")
    assert scrape_timeout_seconds(config) == 10.0  # Prometheus's default
    config.write_text("global:\n  scrape_timeout: soon\n")
    with pytest.raises(ValueError, match="'soon'.*duration"):
        scrape_timeout_seconds(config)
