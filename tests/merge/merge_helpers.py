"""Helpers shared by the merge tests (imported as `merge_helpers`: tests/merge is on sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_torchrun

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON = sys.executable
RUN = [PYTHON, str(REPO / "tools" / "merge" / "run.py")]


def small_env() -> dict:
    """One thread per process: tests share 2 cores with other test runs."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(nproc: int, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run model_tool.py under torchrun."""
    result = run_torchrun(nproc, HERE / "model_tool.py", args, timeout)
    assert result.returncode == 0, f"torchrun model_tool.py {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result
