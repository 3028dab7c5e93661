"""grafana_dash.json type-checks against Grafana's own published dashboard model (`@grafana/schema`
on npm) with the TypeScript compiler: every field name, every nesting and every enum value, with
excess properties refused. Grafana cannot run here; its types are the next best witness that a
Grafana will read the file as we mean it.

The dashboard is written into a TypeScript module as an object literal typed `JsonOf<Dashboard>`
(tools/grafana-schema/dashboard-json.ts); `make test` installs the pinned packages
(scripts/install-node-tools.sh). The keys of the import wrapper (`__inputs`, `__elements`,
`__requires`) are not part of the dashboard model, so they are left out of the check.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.stack_promql import WORKSPACE, dashboard

TOOLS = WORKSPACE / "tools" / "grafana-schema"
TSC = TOOLS / "node_modules" / "typescript" / "bin" / "tsc"
NODE = shutil.which("node")


def _require_tools() -> None:
    if NODE and TSC.exists() and (TOOLS / "node_modules" / "@grafana" / "schema").is_dir():
        return
    message = ("Node.js and the pinned npm packages are needed: run `bash scripts/install-node-tools.sh` "
               "(make test does)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def type_errors(board: dict, scratch: Path) -> list[str]:
    """tsc's errors for `board` checked as Grafana's Dashboard (empty: it type-checks)."""
    _require_tools()
    model = {key: value for key, value in board.items() if not key.startswith("__")}
    (scratch / "node_modules").symlink_to(TOOLS / "node_modules", target_is_directory=True)
    shutil.copy(TOOLS / "dashboard-json.ts", scratch / "dashboard-json.ts")
    shutil.copy(TOOLS / "tsconfig.json", scratch / "tsconfig.json")
    (scratch / "check.ts").write_text(
        "import type { Dashboard } from '@grafana/schema';\n"
        "import type { JsonOf } from './dashboard-json';\n\n"
        f"export const dashboard: JsonOf<Dashboard> = {json.dumps(model, indent=1)};\n",
        encoding="utf-8")
    run = subprocess.run([NODE, str(TSC), "-p", str(scratch / "tsconfig.json")], cwd=scratch,
                         capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stdout.splitlines() if "error TS" in line]
    assert run.returncode == 0 or errors, f"tsc failed without a type error:\n{run.stdout}\n{run.stderr}"
    return errors


def test_the_shipped_dashboard_is_a_grafana_dashboard(tmp_path):
    errors = type_errors(dashboard(), tmp_path)
    assert not errors, "grafana_dash.json does not match @grafana/schema's Dashboard:\n" + "\n".join(errors)


@pytest.mark.parametrize("name, mutate, expected", [
    ("unknown panel field", lambda b: b["panels"][0].__setitem__("datasourceUid", "x"), "datasourceUid"),
    ("threshold mode outside the enum", lambda b: next(
        p for p in b["panels"] if "thresholds" in p.get("fieldConfig", {}).get("defaults", {})
    )["fieldConfig"]["defaults"]["thresholds"].__setitem__("mode", "relative-ish"), "relative-ish"),
    ("grid position as text", lambda b: b["panels"][0]["gridPos"].__setitem__("h", "8"), "number"),
])
def test_the_check_catches(name, mutate, expected, tmp_path):
    board = copy.deepcopy(dashboard())
    mutate(board)
    errors = type_errors(board, tmp_path)
    assert errors and any(expected in line for line in errors), f"{name}: tsc said {errors}"
