"""`sbatch --array` of slurm/train_component.sh on the real local SLURM cluster trains two components.

    .venv/bin/python -m pytest -q tests/training/test_slurm_array.py
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from train_helpers import REPO, start_requeued_task, train_records

from tests.conftest import sbatch_and_wait


@pytest.mark.slurm
def test_sbatch_array_trains_two_components(slurm_cluster, tiny_config, trained_base, tmp_path):
    submit, states = sbatch_and_wait(["--array=0-1", f"--output={tmp_path}/%x-%A_%a.out", "slurm/train_component.sh",
                                      tiny_config, "--train-iters", 3], cwd=REPO)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert sorted(states.values()) == ["COMPLETED 0:0", "COMPLETED 0:0"], f"{submit.stderr}\n{states}\n{logs[-6000:]}"
    work = tiny_config.parent
    for task, name in enumerate(("code", "math")):
        assert (work / "checkpoints" / name / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
        assert (work / "checkpoints" / name / "iter_0000003" / "metadata.json").is_file()
        assert [r["iteration"] for r in train_records(work / "logs" / "train" / name)] == [1, 2, 3]
        assert f"component {task} of {tiny_config}" in logs


def _own_work_dir(tiny_config, tmp_path, parts=("data", "tokenizer")) -> Path:
    """A copy of the tiny experiment whose checkpoints go under tmp_path (the shared base stays untouched)."""
    work = tmp_path / "work"
    for part in parts:
        shutil.copytree(tiny_config.parent / part, work / part)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), "work_dir": str(work)}))
    return config


def _job_fields(job: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in shown.split() if "=" in f)


@pytest.mark.slurm
def test_sbatch_without_array_fails_at_once_naming_the_array(slurm_cluster, tiny_config, tmp_path):
    """Without --array the job cannot know the operator's other flags: it stops (FAILED, so `afterok` never
    fires) before training anything, and its log gives the --array to add."""
    out, states = sbatch_and_wait([f"--output={tmp_path}/%x-%j.out", "slurm/train_component.sh", tiny_config],
                                  cwd=REPO, timeout=120)
    job = out.stdout.strip()
    log = (tmp_path / f"demix-train-{job}.out").read_text()
    assert states == {job: "FAILED 2:0"}, (states, log)
    assert f"sbatch --array=0-1 [your flags] slurm/train_component.sh {tiny_config}" in log
    assert "node(s)" not in log  # stopped before starting any rank


@pytest.mark.slurm
def test_bad_config_fails_in_the_job_as_one_line(slurm_cluster, tiny_config, tmp_path):
    data = yaml.safe_load(tiny_config.read_text())
    data["training"] = {**data["training"], "tensor_model_parallel_size": 3}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    out, states = sbatch_and_wait(["--array=0", f"--output={tmp_path}/%x-%A_%a.out", "slurm/train_component.sh", config],
                                  cwd=REPO, timeout=120)
    log = (tmp_path / f"demix-train-{out.stdout.strip()}_0.out").read_text()
    assert list(states.values()) == ["FAILED 2:0"], (states, log)
    assert log.strip().splitlines() == [
        f"demix check: error: {config}: training: --tensor-model-parallel-size 3 must divide model.num_attention_heads=4"
        " and model.num_query_groups=2"], log


@pytest.mark.slurm
def test_usr1_saves_first_then_requeues_and_the_task_resumes(slurm_cluster, tiny_config, tmp_path):
    """The time-limit path (`--signal=B:USR1@120`), sent by hand: the ranks save a complete checkpoint at the
    signal's iteration, only then is the task requeued, and the requeued task resumes from that checkpoint."""
    config = _own_work_dir(tiny_config, tmp_path)
    save = tmp_path / "work" / "checkpoints" / "base"
    env = {**os.environ, "DEMIX_COMPONENT": "base"}
    log = tmp_path / "train.out"
    submit = subprocess.run(["sbatch", "--parsable", "--array=0", f"--output={log}", "slurm/train_component.sh", str(config),
                             "--train-iters", "160", "--save-interval", "40", "--log-interval", "20"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    task = f"{submit.stdout.strip()}_0"
    try:
        deadline = time.monotonic() + 180
        while "iter_0000040\n" not in (log.read_text() if log.exists() else "") + "\n":  # after a periodic save
            assert time.monotonic() < deadline and _job_fields(task)["JobState"] in ("PENDING", "RUNNING"), _read(log)
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", task], check=True)
        released = False
        while (fields := _job_fields(task))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline + 120, _read(log)
            if fields.get("Reason") == "BeginTime" and not released:  # SLURM holds a requeued job ~2 minutes
                start_requeued_task(task)
                released = True
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", task])
    text = _read(log)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", text
    saved = re.search(r"SIGTERM: saved iteration (\d+)", text)
    assert saved and "save on USR1 failed" not in text, text
    signal_iteration = int(saved.group(1))
    assert text.index("USR1 (time limit near)") < saved.start() < text.index("requeueing"), text
    written = {p.name for p in (save / f"iter_{signal_iteration:07d}").iterdir()}
    # common.pt up to megatron-core 0.18; from 0.19 the common state is inside the checkpoint.
    assert {"metadata.json", ".metadata"} <= written and any(n.endswith(".distcp") for n in written), written
    assert f"training 160 iterations from {signal_iteration}" in text, text
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "160"


def _read(log: Path) -> str:
    return log.read_text() if log.exists() else "(no log yet)"


def test_script_outside_slurm_runs_torchrun(tiny_config, trained_base, tmp_path):
    """How the local executor runs it: task id and process count from DEMIX_TASK_ID / DEMIX_NTASKS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(DEMIX_TASK_ID="1", DEMIX_NTASKS="2")
    result = subprocess.run(["bash", "slurm/train_component.sh", str(tiny_config), "--train-iters", "2", "--save", tmp_path,
                             "--log-dir", tmp_path], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[math] training 2 iterations from 0: TP=1 PP=1 DP=2" in result.stdout
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
