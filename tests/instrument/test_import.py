import subprocess
import sys

import pytest

CHECK = """
import sys, time
before = set(sys.modules)
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
loaded = {{name.split('.')[0] for name in set(sys.modules) - before}}
print(repr((sorted(n for n in loaded if n not in sys.stdlib_module_names), elapsed)))
"""


@pytest.mark.parametrize("module, ours", [("ragmon", {"ragmon"}),
                                          ("m2_3_monitoring", {"ragmon", "m2_3_monitoring"})])
def test_importing_the_library_loads_only_stdlib_and_prometheus_client(module, ours):
    out = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], capture_output=True,
                         text=True, check=True).stdout
    loaded, _elapsed = eval(out)
    assert set(loaded) == ours | {"prometheus_client"}


def test_importing_reads_no_configuration(tmp_path):
    # A broken .env must not break `import m2_3_monitoring`; it is reported on first use.
    (tmp_path / ".env").write_text("METRICS_PORT=abc\n")
    code = "import m2_3_monitoring; print('imported')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": sys.path[0] if sys.path[0] else "."})
    assert "imported" in result.stdout, result.stderr


def test_the_public_api_lists_what_users_call_and_documents_it():
    import m2_3_monitoring
    import ragmon
    assert m2_3_monitoring.__all__ == ragmon.__all__
    internals = {"GuardedMetric", "LabelGuard", "ModelPrice", "StreamSink", "OTHER"}
    assert not internals & set(ragmon.__all__)
    for name in ragmon.__all__:
        value = getattr(ragmon, name)
        assert getattr(m2_3_monitoring, name) is value
        if name != "metrics":
            assert (value.__doc__ or "").strip(), f"ragmon.{name} has no docstring"
    assert {"monitored_query", "stage", "configure", "start_metrics_server"} <= set(ragmon.__all__)


def test_the_library_never_imports_a_top_level_config_module():
    import pathlib
    package = pathlib.Path(__file__).resolve().parents[2] / "ragmon"
    offenders = [str(p) for p in package.rglob("*.py")
                 if "from config import" in p.read_text() or "import config\n" in p.read_text()]
    assert not offenders
