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
