"""Checkpoints move between the two supported megatron-core releases (0.16.1 and 0.19.2).

Needs a second venv with the other release: `make test-compat` builds `.venv-compat` and runs this
with DEMIX_OTHER_PYTHON naming `.venv/bin/python` (without it, the test is skipped):

    DEMIX_OTHER_PYTHON=.venv/bin/python .venv-compat/bin/python -m pytest -q tests/runtime/test_versions.py

A base model trains at TP=2 on one release and is stopped after its checkpoint at iteration 2, the
other release resumes it (weights, optimizer, schedule) to iteration 4, and each release merges the
run's two checkpoints (one written by each) into a proxy that the other release loads, at TP=1,
TP=2 and PP=2: every view gives the same logits.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.training.train_helpers import LAUNCH, train_records, write_tiny_experiment

OTHER = os.environ.get("DEMIX_OTHER_PYTHON")
pytestmark = pytest.mark.skipif(not OTHER, reason="DEMIX_OTHER_PYTHON (a venv with the other megatron-core) not set")


def _megatron_version(python: str) -> str:
    out = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('megatron-core'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _run(python: str, launcher: list, script: Path, *args) -> subprocess.CompletedProcess:
    """`script` under a launcher from `python`'s venv (torchrun or mpiexec), with that venv's megatron-core."""
    result = subprocess.run([str(Path(python).parent / launcher[0]), *launcher[1:], str(script), *map(str, args)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, f"{python} {script} {args}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _torchrun(python: str, script: Path, *args) -> subprocess.CompletedProcess:
    return _run(python, ["torchrun", "--standalone", "--nproc-per-node", "2"], script, *args)


def _merge(python: str, *args) -> subprocess.CompletedProcess:
    return _run(python, ["mpiexec", "-n", "2", python], REPO / "tools" / "merge" / "run.py", *args)


def test_checkpoints_resume_merge_and_load_across_megatron_core_releases(tmp_path):
    this, other = sys.executable, os.path.abspath(OTHER)  # not resolve(): the venv link must stay
    versions = {this: _megatron_version(this), other: _megatron_version(other)}
    assert versions[this] != versions[other], versions  # otherwise this proves nothing
    config = write_tiny_experiment(tmp_path / "work", base_train_iters=4, save_interval=2)
    save = tmp_path / "save"
    train = ["--config", config, "--component", "base", "--tensor-model-parallel-size", 2,
             "--save", save, "--log-dir", save / "logs"]

    _torchrun(this, LAUNCH, *train, "--stop-after-iters", 3)
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    resumed = _torchrun(other, LAUNCH, *train)
    assert "training 4 iterations from 2" in resumed.stdout
    losses = {r["iteration"]: r["loss"] for r in train_records(save / "logs")}
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1], losses

    views = {"tp2": (2, 1), "tp1": (1, 1), "pp2": (1, 2)}
    logits = {}
    for merger, loader in ((this, other), (other, this)):
        proxy = tmp_path / f"proxy-{versions[merger]}"
        _merge(merger, "--run-dir", save, "--start-iteration", 2, "--output", proxy)
        args = [a for name, (tp, pp) in views.items() for a in ("--view", tp, pp, config, tmp_path / f"{versions[merger]}-{name}.pt")]
        _torchrun(loader, REPO / "tests" / "training" / "train_tool.py", "logits", "--checkpoint", proxy, *args)
        logits.update({(versions[merger], name): torch.load(tmp_path / f"{versions[merger]}-{name}.pt") for name in views})
    reference, *others = logits.values()
    assert reference.shape == (2, 64, 512)
    for other_logits in others:
        torch.testing.assert_close(other_logits, reference, rtol=1e-5, atol=1e-5)
