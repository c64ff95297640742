"""The real local SLURM cluster runs the project's sbatch scripts."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO, wait_for_slurm_job

pytestmark = pytest.mark.slurm


def test_prepare_runs_as_a_slurm_job(slurm_cluster, demo_config_dict, tmp_path):
    config = tmp_path / "exp.yaml"
    work = tmp_path / "work"
    config.write_text(yaml.safe_dump({**demo_config_dict, "work_dir": str(work),
                                      "prepare": {"builtin_megabytes": 0.05, "workers": 1}}))
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=2", f"--output={tmp_path}/prepare-%j.out", "--export=ALL",
         str(REPO / "slurm" / "prepare.sh"), str(config)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    states = wait_for_slurm_job(job, timeout=300)
    log = next(tmp_path.glob("prepare-*.out")).read_text()
    assert states == {job: "COMPLETED 0:0"}, log
    for name in ("general", "code", "math"):
        record = json.loads((work / "data" / name / "token_count.json").read_text())
        assert record["tokens"] > 0 and record["workers"] == 2


def test_oversized_request_is_rejected_at_once(slurm_cluster):
    # EnforcePartLimits=ALL: a job asking for more CPUs than the node has fails at submission
    # instead of pending forever.
    out = subprocess.run(["sbatch", "--cpus-per-task=4096", "--wrap=true"], capture_output=True, text=True)
    assert out.returncode != 0
