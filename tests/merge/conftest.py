"""Merge fixtures: tiny GPT checkpoints saved by megatron-core under torchrun (gloo, CPU), once per session.

    A, B, BASE: TP=2, PP=2 (4 processes)     C: TP=1, PP=1 (another chunk layout)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from merge_helpers import torchrun


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Save roots {'A', 'B', 'BASE', 'C'} of the tiny GPT with different random weights."""
    root = tmp_path_factory.mktemp("merge_ckpts")
    paths = {name: root / name for name in ("A", "B", "BASE", "C")}
    torchrun(4, ["save", "--tp", 2, "--pp", 2, "--seed", 1, "--out", paths["A"], "--seed", 2, "--out", paths["B"],
                 "--seed", 4, "--out", paths["BASE"]])
    torchrun(1, ["save", "--tp", 1, "--pp", 1, "--seed", 3, "--out", paths["C"]])
    return paths


@pytest.fixture
def damaged_copy(checkpoints, tmp_path):
    """A fresh copy of checkpoint A to break."""
    def copy(name: str = "A") -> Path:
        target = tmp_path / f"{name}_copy"
        shutil.copytree(checkpoints[name], target)
        return target
    return copy
