"""The trainer under real torchrun/gloo process groups on CPU: TP, PP, DP, checkpoints, resume.

    .venv/bin/python -m pytest -q tests/training
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from train_helpers import LAUNCH, REPO, check, torchrun, train_records

TOOL = REPO / "tests" / "training" / "train_tool.py"


def _falls(losses: list[float]) -> bool:
    return losses[-1] < losses[0] - 0.3


def test_tp2_trains_and_saves_megatron_layout(trained_base):
    losses = [r["loss"] for r in train_records(trained_base.parent.parent / "logs" / "train" / "base")]
    assert len(losses) == 8 and _falls(losses), losses
    assert (trained_base / "latest_checkpointed_iteration.txt").read_text().strip() == "8"
    iteration = trained_base / "iter_0000008"
    assert json.loads((iteration / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    # common.pt up to megatron-core 0.18, inside the checkpoint from 0.19: megatron reads either.
    from megatron.core.dist_checkpointing import load_common_state_dict

    common = load_common_state_dict(str(iteration))
    assert common["iteration"] == 8 and common["parallel"] == {"tp": 2, "pp": 1}
    assert common["config"]["model"]["hidden_size"] == 64
    valid = train_records(trained_base.parent.parent / "logs" / "train" / "base", "valid")
    assert [r["domain"] for r in valid] == ["general"]


def test_pp2_trains(tiny_config, tmp_path):
    save = tmp_path / "pp2"
    check(torchrun(2, "--config", tiny_config, "--component", "base", "--pipeline-model-parallel-size", 2,
                   "--save", save, "--log-dir", save / "logs"))
    losses = [r["loss"] for r in train_records(save / "logs")]
    assert len(losses) == 8 and _falls(losses), losses


def test_tp2_checkpoint_loads_at_tp1_and_pp2_with_same_logits(tiny_config, trained_base, tmp_path):
    # Vocabulary padding depends on TP: with make_vocab_size_divisible_by 80 the TP=1 model has 560
    # embedding rows where the TP=2 checkpoint has 512; the real 512 tokens must still match.
    padded = tmp_path / "padded.yaml"
    data = yaml.safe_load(tiny_config.read_text())
    padded.write_text(yaml.safe_dump({**data, "model": {**data["model"], "make_vocab_size_divisible_by": 80}}))
    views = {"tp2": (2, 1, tiny_config), "tp1": (1, 1, tiny_config), "pp2": (1, 2, tiny_config), "padded": (1, 1, padded)}
    args = [a for name, view in views.items() for a in ("--view", *view, tmp_path / f"{name}.pt")]
    check(torchrun(2, "logits", "--checkpoint", trained_base, *args, script=TOOL))  # TP=1 views: DP=2
    saved, *others = (torch.load(tmp_path / f"{name}.pt") for name in views)
    assert saved.shape == (2, 64, 512)
    for other in others:
        torch.testing.assert_close(other, saved, rtol=1e-5, atol=1e-5)


def test_a_trained_model_is_answered_without_torch(tiny_config, trained_base):
    """Launched again on its complete save root (a requeued or resubmitted task): nothing is trained, torch is not
    imported, and the checkpoint is untouched."""
    probe = (f"import atexit, runpy, sys; sys.argv[0] = {str(LAUNCH)!r}; atexit.register(lambda: print('torch' in sys.modules));"
             " runpy.run_path(sys.argv[0], run_name='__main__')")
    before = (trained_base / "latest_checkpointed_iteration.txt").stat().st_mtime_ns
    result = subprocess.run([sys.executable, "-c", probe, "--config", str(tiny_config), "--component", "base"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[base] {trained_base} holds iteration 8 of 8: already trained, nothing to do" in result.stdout
    assert result.stdout.split()[-1] == "False"
    assert (trained_base / "latest_checkpointed_iteration.txt").stat().st_mtime_ns == before


def test_component_first_step_weights_equal_base(tiny_config, trained_base, tmp_path):
    """The base was saved at TP=2; the component starts at PP=2 and must hold exactly its weights."""
    out = tmp_path / "report.json"
    check(torchrun(2, "first-step", "--config", tiny_config, "--component", "code", "--pp", 2,
                   "--save", tmp_path / "code", "--out", out, script=TOOL))
    report = json.loads(out.read_text())
    assert report["iteration"] == 0 and report["compared"] > 5
    assert report["max_abs_diff"] == 0.0


def test_resume_after_kill_matches_uninterrupted(tiny_config, trained_base, tmp_path):
    """DP=2: stop after iteration 3 (last checkpoint at 2), resume, compare every logged step."""
    common = ["--config", tiny_config, "--component", "math", "--train-iters", 6, "--save-interval", 2]
    check(torchrun(2, *common, "--save", tmp_path / "straight", "--log-dir", tmp_path / "straight"))
    interrupted = ["--save", tmp_path / "resumed", "--log-dir", tmp_path / "resumed"]
    check(torchrun(2, *common, *interrupted, "--stop-after-iters", 3))
    assert (tmp_path / "resumed" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    result = check(torchrun(2, *common, *interrupted))
    assert "training 6 iterations from 2" in result.stdout
    straight = {r["iteration"]: r for r in train_records(tmp_path / "straight")}
    resumed = {r["iteration"]: r for r in train_records(tmp_path / "resumed")}  # later records win
    assert sorted(resumed) == sorted(straight) == [1, 2, 3, 4, 5, 6]
    for it in range(1, 7):
        assert resumed[it]["loss"] == pytest.approx(straight[it]["loss"], rel=1e-6, abs=1e-6), it
        assert resumed[it]["lr"] == pytest.approx(straight[it]["lr"]), it


def test_tensorboard_events_when_installed(trained_base):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_base.parent.parent / "logs" / "train" / "base" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s", "valid/general/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


def test_dali_loader_gives_the_same_training_steps(tiny_config, trained_base, tmp_path):
    """DALI CPU pipeline at TP=2: its first 3 steps equal the torch loader's (the base run, same schedule so far)."""
    pytest.importorskip("nvidia.dali")
    check(torchrun(2, "--config", tiny_config, "--component", "base", "--tensor-model-parallel-size", 2,
                   "--dataloader", "dali", "--train-iters", 3, "--save", tmp_path, "--log-dir", tmp_path))
    dali = [r["loss"] for r in train_records(tmp_path)]
    torch_loader = [r["loss"] for r in train_records(trained_base.parent.parent / "logs" / "train" / "base")][:3]
    assert dali == pytest.approx(torch_loader, rel=1e-6)


def test_sigterm_saves_and_exits_cleanly(tiny_config, trained_base, tmp_path):
    """--exit-signal-handler (what slurm/train_component.sh passes): SIGTERM -> checkpoint, exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(LAUNCH), "--config", str(tiny_config), "--component", "code", "--train-iters", "1000",
         "--exit-signal-handler", "--save", str(tmp_path), "--log-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    output = []
    for line in process.stdout:
        output.append(line)
        if "iter 2/1000" in line:
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, "".join(output)
    saved = int((tmp_path / "latest_checkpointed_iteration.txt").read_text())
    assert 2 <= saved < 1000 and f"SIGTERM: saved iteration {saved}" in "".join(output)
