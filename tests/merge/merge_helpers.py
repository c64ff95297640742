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
    """Library warnings off (one thread per process comes from tests/conftest.py)."""
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def torchrun(nproc: int, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run model_tool.py under torchrun."""
    result = run_torchrun(nproc, HERE / "model_tool.py", args, timeout)
    assert result.returncode == 0, f"torchrun model_tool.py {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result
