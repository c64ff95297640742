"""Both executors run the same job script: sbatch on the real local SLURM cluster, and bash here."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from megatron_demix.cluster.config import ClusterConfig
from megatron_demix.cluster.executor import JobFailed, JobSpec, LocalExecutor, SlurmExecutor


def _experiment_file(tmp_path, demo_config_dict):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**demo_config_dict, "work_dir": str(tmp_path / "work"),
                                      "prepare": {"builtin_megabytes": 0.05, "workers": 1}}))
    return config


@pytest.mark.parametrize("backend", [pytest.param(SlurmExecutor, marks=pytest.mark.slurm), LocalExecutor])
def test_prepare_job_runs_to_completion(request, backend, tmp_path, demo_config_dict):
    if backend is SlurmExecutor:
        request.getfixturevalue("slurm_cluster")
    config = _experiment_file(tmp_path, demo_config_dict)
    executor = backend(ClusterConfig(cpus_per_task=2), log_dir=tmp_path / "logs")
    job = executor.submit(JobSpec("prepare", "slurm/prepare.sh", [str(config)]))
    states = job.wait(timeout=300)
    assert list(states.values()) == ["COMPLETED 0:0"], job.log().read_text()
    for name in ("general", "code", "math"):
        record = json.loads((tmp_path / "work" / "data" / name / "token_count.json").read_text())
        assert record["tokens"] > 0


@pytest.mark.parametrize("backend", [pytest.param(SlurmExecutor, marks=pytest.mark.slurm), LocalExecutor])
def test_failed_array_task_is_reported_with_its_log(request, backend, tmp_path):
    if backend is SlurmExecutor:
        request.getfixturevalue("slurm_cluster")
    executor = backend(ClusterConfig(), log_dir=tmp_path / "logs")
    job = executor.submit(JobSpec("prepare", "slurm/prepare.sh", [str(tmp_path / "missing.yaml")], array=2))
    with pytest.raises(JobFailed, match="tasks failed") as error:
        job.wait(timeout=300)
    assert len(job.states) == 2
    log = job.log(1)
    assert str(log) in str(error.value) and "missing.yaml" in log.read_text()


@pytest.mark.slurm
def test_oversized_request_is_refused_at_submission(slurm_cluster, tmp_path):
    # EnforcePartLimits=ALL: more CPUs than the node has fails at once instead of pending forever.
    executor = SlurmExecutor(ClusterConfig(cpus_per_task=4096), log_dir=tmp_path)
    with pytest.raises(JobFailed, match="sbatch refused"):
        executor.submit(JobSpec("prepare", "slurm/prepare.sh", ["x.yaml"]))
    assert subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
