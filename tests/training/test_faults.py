"""Faults in training (issue 9): divergence stops without saving, checkpoint retention, and the
clean-up of incomplete `iter_*` directories a killed save leaves.

    .venv/bin/python -m pytest -q tests/training/test_faults.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from train_helpers import LAUNCH, REPO, train_records, with_training

from tests.filesystems import tmpfs


def _launch(config, *args) -> subprocess.CompletedProcess:
    """One process (world size 1), as `python launch/train_component.py --config ...`."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(LAUNCH), "--config", str(config), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _all_finite(checkpoint) -> bool:
    """Every tensor of a torch_dist checkpoint, read without a model (torch DCP's converter)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    flat = checkpoint.parent / f"{checkpoint.name}.pt"
    dcp_to_torch_save(checkpoint, flat)
    tensors = [v for v in _leaves(torch.load(flat, weights_only=False)) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert len(tensors) > 10
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_divergence_stops_without_saving_the_bad_state(tiny_config, tmp_path):
    """--lr 1e6 diverges within a few steps: exit 1 with one line, the tracker names the last good save."""
    save = tmp_path / "save"
    result = _launch(tiny_config, "--component", "base", "--lr", "1e6", "--min-lr", 0, "--train-iters", 20,
                     "--save-interval", 1, "--save", save, "--log-dir", save)
    assert result.returncode == 1, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(error) == 1 and "not finite" in error[0] and "Traceback" not in result.stderr, result.stderr[-3000:]
    diverged = int(error[0].split("iteration ")[1].split(":")[0])
    latest = int((save / "latest_checkpointed_iteration.txt").read_text())
    assert latest == diverged - 1 and f"latest checkpoint in {save} is iteration {latest}" in error[0]
    assert sorted(p.name for p in save.glob("iter_*"))[-1] == f"iter_{latest:07d}"
    assert _all_finite(save / f"iter_{latest:07d}")


def test_nan_check_can_be_turned_off(tiny_config, tmp_path):
    """training.check_for_nan_in_loss_and_grad: false (Megatron-LM's --no-check-for-nan-in-loss-and-grad) trains on."""
    config = with_training(tiny_config, tmp_path, check_for_nan_in_loss_and_grad=False)
    result = _launch(config, "--component", "base", "--lr", "1e6", "--min-lr", 0, "--train-iters", 6,
                     "--save", tmp_path / "save", "--log-dir", tmp_path / "save")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(r["grad_norm"] != r["grad_norm"] for r in train_records(tmp_path / "save"))  # a NaN was logged


def test_keep_checkpoints_and_incomplete_iter_dirs_removed_at_start(tiny_config, tmp_path):
    from megatron_demix.training.run_state import remove_incomplete_checkpoints

    config = with_training(tiny_config, tmp_path, keep_checkpoints=2, save_interval=1)
    save = tmp_path / "save"
    # A save root with no tracker: every iter_* in it is a save that never finished.
    (save / "iter_0000003").mkdir(parents=True)
    (save / "iter_0000003" / "__0_0.distcp").write_bytes(b"partial")
    result = _launch(config, "--component", "base", "--train-iters", 4, "--save", save, "--log-dir", save)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"removed {save / 'iter_0000003'}: an incomplete checkpoint" in result.stdout
    assert "removed iter_0000001 (training.keep_checkpoints=2)" in result.stdout
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000003", "iter_0000004"]
    assert (save / "iter_0000003" / "metadata.json").is_file()  # the real save of iteration 3
    # A directory newer than the tracker (a kill during the save of iteration 9) goes at the next start.
    (save / "iter_0000009").mkdir()
    assert remove_incomplete_checkpoints(save) == [save / "iter_0000009"]
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000003", "iter_0000004"]


def test_read_only_save_directory_fails_before_training(tiny_config, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        result = _launch(tiny_config, "--component", "base", "--train-iters", 2, "--save", read_only / "save",
                         "--log-dir", tmp_path / "logs")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--save {read_only / 'save'}: cannot write there (read-only file system)" in result.stderr
    assert "Traceback" not in result.stderr and "training" not in result.stdout


def test_full_disk_during_a_save_is_one_line_and_leaves_no_partial_checkpoint(tiny_config, tmp_path):
    with tmpfs(tmp_path / "small", "200k") as small:
        result = _launch(tiny_config, "--component", "base", "--train-iters", 2, "--save", small / "save",
                         "--log-dir", tmp_path / "logs")
        left = sorted(p.name for p in (small / "save").iterdir())
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "cannot write (no space left on device); the file system is full" in errors[0], result.stderr[-3000:]
    assert "the latest complete checkpoint is none" in errors[0] and "Traceback" not in result.stderr
    assert left == []


def test_tracker_naming_an_incomplete_directory(tiny_config, trained_base, tmp_path):
    """A tracker pointing at an iter_* without .metadata: one line naming it and the complete one to use."""
    import shutil

    save = tmp_path / "save"
    shutil.copytree(trained_base, save)
    shutil.copytree(save / "iter_0000008", save / "iter_0000009")
    (save / "iter_0000009" / ".metadata").unlink()
    (save / "latest_checkpointed_iteration.txt").write_text("9\n")
    message = (f"{save / 'iter_0000009'}: has metadata.json but no .metadata, so it is an incomplete torch_dist"
               f" checkpoint (a save that did not finish, or a partial copy); iter_0000008 is complete: write 8 into")
    result = _launch(tiny_config, "--component", "base", "--load", save, "--save", save, "--log-dir", tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    # The same check covers the weights a component starts from (in-process: no process group needed).
    from megatron_demix.checkpoint.layout import CheckpointError
    from megatron_demix.experiment import load_experiment
    from megatron_demix.training.run_options import RunOptions
    from megatron_demix.training.trainer import check_before_start

    experiment = load_experiment(tiny_config)
    run = RunOptions.defaults(experiment, "code", save=tmp_path / "code", pretrained=save, log_dir=tmp_path / "logs")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        check_before_start(experiment, run, world_size=1)
