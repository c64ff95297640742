"""SIGTERM from SLURM after a periodic save (issue 9, item 1), on the real local cluster.

SLURM signals every process of the job step (scancel, requeue, time limit), including helper
processes a rank started; the save on that signal must still complete, and the task run again
(requeued or resubmitted) resumes from it.

    .venv/bin/python -m pytest -q tests/training/test_slurm_signals.py
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest
from train_helpers import REPO, start_requeued_task, train_records

SAVE_INTERVAL, STOP_AFTER = 3, 30


def _submit(config, tmp_path, save) -> str:
    """Component 0 as `sbatch --array=0 slurm/train_component.sh`, periodic saves, a large budget;
    --stop-after-iters ends the resumed run early (without a save) so the test stays short."""
    submit = subprocess.run(
        ["sbatch", "--parsable", "--array=0", f"--output={tmp_path}/%x-%A_%a.out", "slurm/train_component.sh",
         str(config), "--train-iters", "1000", "--save-interval", str(SAVE_INTERVAL), "--stop-after-iters", str(STOP_AFTER),
         "--save", str(save), "--log-dir", str(save / "logs")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    return submit.stdout.strip().split(";")[0] + "_0"


def _wait(condition, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _state(task: str) -> str:
    shown = subprocess.run(["scontrol", "-o", "show", "job", task], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\S+)", shown)
    return match.group(1) if match else "GONE"


def _after_first_periodic_save(save):
    """Wait until a periodic checkpoint exists and training went on past it."""
    def ready():
        tracker = save / "latest_checkpointed_iteration.txt"
        if not tracker.is_file() or not (save / "logs" / "train.jsonl").is_file():
            return False
        return train_records(save / "logs")[-1]["iteration"] > int(tracker.read_text())
    _wait(ready, "the first periodic save")


def _signal_save(log: str) -> int:
    saved = re.findall(r"SIGTERM: saved iteration (\d+)", log)
    assert len(saved) == 1, log[-5000:]
    return int(saved[0])


def _assert_complete_checkpoint(save, iteration: int):
    assert int((save / "latest_checkpointed_iteration.txt").read_text()) == iteration
    path = save / f"iter_{iteration:07d}"
    assert {"metadata.json", ".metadata"} <= {p.name for p in path.iterdir()}
    assert any(path.glob("__*_*.distcp"))
    from megatron.core.dist_checkpointing import load_common_state_dict  # common.pt or (0.19) inside

    assert load_common_state_dict(str(path))["iteration"] == iteration


@pytest.mark.slurm
@pytest.mark.parametrize("signal_with", ["scancel", "requeue"])
def test_sigterm_after_periodic_save_saves_and_the_task_resumes(slurm_cluster, tiny_config, trained_base, tmp_path, signal_with):
    save = tmp_path / "save"
    task = _submit(tiny_config, tmp_path, save)
    try:
        _after_first_periodic_save(save)
        if signal_with == "scancel":
            # SIGTERM to every process of the job's steps (the batch shell stays), as scancel --signal does.
            subprocess.run(["scancel", "--signal=TERM", task], check=True)
            ended = _wait(lambda: _state(task) in ("COMPLETED", "FAILED", "CANCELLED") and _state(task), "the job's end")
            log = "".join(p.read_text() for p in tmp_path.glob("*.out"))
            assert ended == "COMPLETED", log[-5000:]
            saved = _signal_save(log)
            _assert_complete_checkpoint(save, saved)
            task = _submit(tiny_config, tmp_path, save)  # the operator runs the task again
        else:
            # SLURM's own requeue: SIGTERM to the whole job, KillWait, then the task starts again.
            subprocess.run(["scontrol", "requeue", task], check=True)
            # slurmctld holds a requeued job back (BeginTime about two minutes on); let it start now.
            _wait(lambda: _state(task) == "PENDING", "the requeued task to be pending")
            start_requeued_task(task)
        _wait(lambda: _state(task) == "COMPLETED", "the resumed task", timeout=300)
    finally:
        subprocess.run(["scancel", task], capture_output=True)
    log = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    saved = _signal_save(log)
    assert saved % SAVE_INTERVAL != 0 or f"saved {save / f'iter_{saved:07d}'}" in log
    assert "BrokenPipeError" not in log and "Traceback" not in log, log[-5000:]
    assert f"training 1000 iterations from {saved}" in log, log[-5000:]
    assert f"stopping after iteration {STOP_AFTER} without saving" in log
    resumed = [r["iteration"] for r in train_records(save / "logs")]
    assert resumed[-1] == STOP_AFTER and saved + 1 in resumed[resumed.index(saved) + 1:], resumed
    _assert_complete_checkpoint(save, max(saved, STOP_AFTER // SAVE_INTERVAL * SAVE_INTERVAL))
