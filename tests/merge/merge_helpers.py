"""Helpers shared by the merge tests (imported as `merge_helpers`: tests/merge is on sys.path)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON = sys.executable
RUN = [PYTHON, str(REPO / "tools" / "merge" / "run.py")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_env() -> dict:
    """One thread per process: tests share 2 cores with other test runs."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(nproc: int, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run model_tool.py under torchrun; retried on a fresh port if another test run took the port."""
    for attempt in range(3):
        command = [str(Path(PYTHON).parent / "torchrun"), "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                   str(HERE / "model_tool.py"), *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=small_env(), cwd=REPO)
        if result.returncode == 0 or "address already in use" not in (result.stdout + result.stderr).lower():
            break
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result
