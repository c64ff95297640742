"""Real small and read-only file systems (tmpfs mounts) for tests of full-disk and read-only errors.

Needs root (as the SLURM tests do); a test using them is skipped where mounting is not permitted.
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """Mount a tmpfs of `size` (e.g. "200k") at `path` for the block; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); these tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
