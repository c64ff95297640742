"""`sbatch --array` of slurm/train_component.sh on the real local SLURM cluster trains two components.

    .venv/bin/python -m pytest -q tests/training/test_slurm_array.py
"""
from __future__ import annotations

import os
import subprocess

import pytest
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
