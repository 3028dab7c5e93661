import subprocess
import sys

CHECK = """
import sys
before = set(sys.modules)
import m2_3_monitoring
loaded = {name.split('.')[0] for name in set(sys.modules) - before}
print(sorted(n for n in loaded if n not in sys.stdlib_module_names))
"""


def test_importing_the_library_loads_only_stdlib_and_prometheus_client():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["m2_3_monitoring", "prometheus_client", "ragmon"]


def test_importing_reads_no_configuration(tmp_path):
    # A broken .env must not break `import m2_3_monitoring`; it is reported on first use.
    (tmp_path / ".env").write_text("METRICS_PORT=abc\n")
    code = "import m2_3_monitoring; print('imported')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": sys.path[0] if sys.path[0] else "."})
    assert "imported" in result.stdout, result.stderr
