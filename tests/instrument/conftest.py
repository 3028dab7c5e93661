"""Fixtures of the instrumentation tests."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of the given size (optionally read-only) under tmp_path; unmounts after."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            message = "mounting a tmpfs needs root (run the suite as root, as `make test` in CI does)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)
