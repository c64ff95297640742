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
                                      "prepare": {"builtin_megabytes": 0.3, "workers": 1}}))
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
    for name in [d["name"] for d in demo_config_dict["datasets"]]:
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


@pytest.mark.slurm
def test_stage_resources_reach_sbatch_and_unset_ones_keep_the_script_values(slurm_cluster, tmp_path):
    """Read back from `scontrol show job`: the stage's keys over the shared ones; the script's own #SBATCH --time
    and --cpus-per-task stay where the experiment says nothing."""
    from megatron_demix.cluster.config import StageResources

    cluster = ClusterConfig(time="00:20:00", extra_sbatch_args=["--hold"],
                            stages={"merge": StageResources(time="00:07:00", cpus_per_task=1, ntasks_per_node=2),
                                    "prepare": StageResources(nodes=1)})
    executor = SlurmExecutor(cluster, log_dir=tmp_path)
    jobs = {"merge": executor.submit(JobSpec("merge-p0", "slurm/merge.sh", ["--help"], ntasks=2, stage="merge")),
            "train": executor.submit(JobSpec("train", "slurm/train_component.sh", ["x.yaml"], array=3, max_parallel=2, stage="train")),
            "prepare": executor.submit(JobSpec("prepare", "slurm/prepare.sh", ["x.yaml"], stage="prepare"))}
    try:
        shown = {stage: subprocess.run(["scontrol", "-o", "show", "job", job.id], capture_output=True, text=True).stdout
                 for stage, job in jobs.items()}
    finally:
        subprocess.run(["scancel", *(job.id for job in jobs.values())])
    fields = {stage: dict(f.split("=", 1) for f in text.split() if "=" in f) for stage, text in shown.items()}
    assert (fields["merge"]["TimeLimit"], fields["merge"]["NumTasks"], fields["merge"]["CPUs/Task"]) == ("00:07:00", "2", "1")
    assert fields["merge"]["JobName"] == "demix-merge-p0" and fields["merge"]["StdOut"] == f"{tmp_path}/merge-p0-{jobs['merge'].id}.out"
    assert fields["train"]["TimeLimit"] == "00:20:00" and "ArrayTaskId=0-2%2" in shown["train"]
    # prepare sets no time and no CPUs: the shared time applies, and prepare.sh's own --cpus-per-task=2.
    assert (fields["prepare"]["TimeLimit"], fields["prepare"]["CPUs/Task"]) == ("00:20:00", "2")
    held = ClusterConfig(extra_sbatch_args=["--hold"])
    script_default = SlurmExecutor(held, log_dir=tmp_path).submit(JobSpec("prepare", "slurm/prepare.sh", ["x.yaml"], stage="prepare"))
    try:
        plain = subprocess.run(["scontrol", "-o", "show", "job", script_default.id], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["scancel", script_default.id])
    assert "TimeLimit=04:00:00" in plain  # slurm/prepare.sh's #SBATCH --time, not overridden
