"""`sbatch --array` of slurm/train_component.sh on the real local SLURM cluster trains two components.

    .venv/bin/python -m pytest -q tests/training/test_slurm_array.py
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from train_helpers import REPO, train_records


@pytest.mark.slurm
def test_sbatch_array_trains_two_components(slurm_cluster, tiny_config, trained_base, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    submit = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--array=0-1", f"--output={tmp_path}/%x-%A_%a.out",
         "slurm/train_component.sh", str(tiny_config), "--train-iters", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert submit.returncode == 0, f"{submit.stderr}\n{logs[-6000:]}"
    job = submit.stdout.strip().split(";")[0]
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    states = sorted(field.split("=")[1] for field in shown.split() if field.startswith("JobState="))
    assert states == ["COMPLETED", "COMPLETED"], shown
    work = tiny_config.parent
    for task, name in enumerate(("code", "math")):
        assert (work / "checkpoints" / name / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
        assert (work / "checkpoints" / name / "iter_0000003" / "metadata.json").is_file()
        assert [r["iteration"] for r in train_records(work / "logs" / "train" / name)] == [1, 2, 3]
        assert f"component {task} of {tiny_config}" in logs


@pytest.mark.slurm
def test_sbatch_without_array_submits_one_task_per_candidate(slurm_cluster, tiny_config, trained_base, tmp_path):
    """The operator's command: `sbatch slurm/train_component.sh exp.yaml` resubmits itself as an array."""
    from megatron_demix.cluster.executor import wait_for_slurm_job

    work = tmp_path / "work"
    for part in ("data", "tokenizer", "checkpoints/base"):
        shutil.copytree(tiny_config.parent / part, work / part)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), "work_dir": str(work)}))
    # SBATCH_OUTPUT reaches the array the job submits (sbatch reads it from the environment).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SBATCH_OUTPUT": f"{tmp_path}/%x-%A_%a.out"}
    outer = subprocess.run(["sbatch", "--wait", "slurm/train_component.sh", str(config), "--train-iters", "2"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert outer.returncode == 0, outer.stderr
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    array = re.search(r"Submitted batch job (\d+)", logs)
    assert "submitting an array of 2 component tasks" in logs and array, logs
    states = wait_for_slurm_job(array.group(1), timeout=300)
    assert sorted(states.values()) == ["COMPLETED 0:0", "COMPLETED 0:0"], states
    for name in ("code", "math"):
        assert (work / "checkpoints" / name / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_script_outside_slurm_runs_torchrun(tiny_config, trained_base, tmp_path):
    """How the local executor runs it: task id and process count from DEMIX_TASK_ID / DEMIX_NTASKS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", DEMIX_TASK_ID="1", DEMIX_NTASKS="2")
    result = subprocess.run(["bash", "slurm/train_component.sh", str(tiny_config), "--train-iters", "2", "--save", tmp_path,
                             "--log-dir", tmp_path], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[math] training 2 iterations from 0: TP=1 PP=1 DP=2" in result.stdout
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
