"""Running the ORIGINAL alexa/bort code (`../shared/reference/alexa-bort`, MXNet 1.9.1 + GluonNLP 0.8.3) from
tests, as an independent reference.

`../shared/tools/bort-original-env.sh` builds the side virtual environment once (about 40 s; reused across runs,
in `$BORT_ORIGINAL_ENV_DIR`, default `<tmp>/bort-original-env`). Without the tool or a package registry to
build it, the tests that need it skip; with `BORT_GLUON_REQUIRED=1` (as in CI) they fail instead.

    python, pythonpath = original_env()
    result = run_original("from bort import bort; ...", cwd=tmp_path)   # stdout / stderr of the snippet
"""
from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import SHARED

TOOL = SHARED / "tools" / "bort-original-env.sh"
ENV_DIR = Path(os.environ.get("BORT_ORIGINAL_ENV_DIR", Path(tempfile.gettempdir()) / "bort-original-env"))


def _unavailable(reason: str) -> None:
    if os.environ.get("BORT_GLUON_REQUIRED"):
        pytest.fail(reason)
    pytest.skip(reason)


@functools.lru_cache(maxsize=1)
def _build() -> tuple[str, str] | str:
    """(python, PYTHONPATH) of the side venv, or the reason it could not be built (cached per test session)."""
    if not TOOL.exists():
        return f"the original-Bort tool was not found at {TOOL} (set BORT_SHARED)"
    result = subprocess.run(["bash", str(TOOL), str(ENV_DIR)], capture_output=True, text=True, timeout=1800)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or len(lines) < 2:
        tail = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)[-1500:]
        return f"could not build the original-Bort side venv in {ENV_DIR} (no package registry?):\n{tail}"
    return lines[-2], lines[-1]


def original_env() -> tuple[Path, str]:
    """The side venv's python and the PYTHONPATH under which the original code imports (`from bort import
    bort`, `from utils import ...`, `from data import ...`); skips (or fails in CI) when unavailable."""
    built = _build()
    if isinstance(built, str):
        _unavailable(built)
    python, pythonpath = built
    return Path(python), pythonpath


def run_original(code: str, cwd: str | os.PathLike, *args: str, timeout: float = 600
                 ) -> subprocess.CompletedProcess:
    """Run the Python snippet `code` (with `args` as sys.argv[1:]) in the side venv with the original code
    importable, in `cwd`; fails the test with its stderr when it exits non-zero."""
    python, pythonpath = original_env()
    env = {**os.environ, "PYTHONPATH": pythonpath, "MXNET_HOME": str(Path(cwd) / ".mxnet"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([str(python), "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"the original code failed (rc {result.returncode}):\n{result.stderr[-4000:]}"
    return result
