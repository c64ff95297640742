"""The `cluster:` section and sbatch argument building, in-process (no cluster needed)."""
from __future__ import annotations

import pytest
import yaml

from megatron_demix.cluster.config import ClusterConfig, StageResources
from megatron_demix.cluster.executor import JobSpec, SlurmExecutor
from megatron_demix.config.base import ConfigError, build
from megatron_demix.experiment import experiment_from_dict, load_experiment
from tests.conftest import REPO

PAPER_LIKE = {
    "executor": "slurm", "partition": "gpu", "account": "proj", "extra_sbatch_args": ["--qos=high"],
    "stages": {
        "train": {"nodes": 8, "ntasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8, "time": "48:00:00"},
        "merge": {"ntasks_per_node": 8, "partition": "cpu", "mem": "64G", "time": "1:00:00", "extra_sbatch_args": ["--exclusive"]},
    },
}


def _args(cluster: ClusterConfig, spec: JobSpec) -> dict[str, str]:
    args = SlurmExecutor(cluster, log_dir="/logs").sbatch_args(spec)
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in args)


def test_stage_keys_override_the_shared_defaults():
    cluster = build(ClusterConfig, PAPER_LIKE, "exp.yaml: cluster")
    assert isinstance(cluster.stages["train"], StageResources)
    train, merge, prepare = (cluster.resources(s) for s in ("train", "merge", "prepare"))
    assert (train.nodes, train.gpus_per_node, train.partition, train.account) == (8, 8, "gpu", "proj")
    assert (merge.partition, merge.account, merge.gpus_per_node, merge.mem) == ("cpu", "proj", None, "64G")
    assert merge.extra_sbatch_args == ["--qos=high", "--exclusive"]
    assert prepare == StageResources(partition="gpu", account="proj", extra_sbatch_args=["--qos=high"])
    assert cluster.ranks("train", 1) == 64 and cluster.ranks("eval", 3) == 3


def test_sbatch_args_carry_the_stage_resources_and_nothing_unset():
    cluster = build(ClusterConfig, PAPER_LIKE, "exp.yaml: cluster")
    train = _args(cluster, JobSpec("train", "slurm/train_component.sh", array=7, ntasks=64, stage="train", max_parallel=3))
    assert train["ntasks"] == "64" and train["nodes"] == "8" and train["ntasks-per-node"] == "8"
    assert train["gpus-per-node"] == "8" and train["time"] == "48:00:00" and train["array"] == "0-6%3"
    assert train["output"] == "/logs/train-%A_%a.out" and "qos" in train
    merge = _args(cluster, JobSpec("merge-p0", "slurm/merge.sh", ntasks=8, stage="merge"))
    assert merge["partition"] == "cpu" and merge["mem"] == "64G" and "exclusive" in merge and "gpus-per-node" not in merge
    assert merge["output"] == "/logs/merge-p0-%j.out" and "array" not in merge
    # Unset everywhere: not passed, so the script's own #SBATCH --time / --cpus-per-task apply.
    plain = _args(ClusterConfig(), JobSpec("prepare", "slurm/prepare.sh", stage="prepare"))
    assert not {"time", "cpus-per-task", "partition", "account", "mem", "gpus-per-node"} & set(plain)
    assert (plain["ntasks"], plain["nodes"], plain["ntasks-per-node"]) == ("1", "1", "1")


@pytest.mark.parametrize("ntasks, resources, expected", [
    (4, {}, ("4", "1", "4")),                                   # one node unless told otherwise
    (4, {"nodes": 2}, ("4", "2", "2")),                          # spread over the nodes given
    (5, {"nodes": 2}, ("5", "2", "3")),                          # uneven: ceil per node
    (16, {"ntasks_per_node": 8}, ("8", "1", "8")),               # the experiment's layout wins: 1 node x 8
    (1, {"nodes": 2, "ntasks_per_node": 4}, ("8", "2", "4")),
])
def test_rank_counts_per_node(ntasks, resources, expected):
    args = _args(ClusterConfig(stages={"train": StageResources(**resources)}), JobSpec("t", "s.sh", ntasks=ntasks, stage="train"))
    assert (args["ntasks"], args["nodes"], args["ntasks-per-node"]) == expected


@pytest.mark.parametrize("cluster, message", [
    ({"stages": {"trian": {}}}, "cluster.stages: unknown stage(s) trian"),
    ({"stages": {"train": {"time": "two days"}}}, "cluster.stages.train.time: 'two days' is not a SLURM time"),
    ({"time": "25:61:00:00"}, "cluster.time: '25:61:00:00' is not a SLURM time"),
    ({"stages": {"merge": {"mem": "lots"}}}, "cluster.stages.merge.mem: 'lots' is not a SLURM memory size"),
    ({"stages": {"train": {"nodes": 0}}}, "cluster.stages.train.nodes: 0 must be >= 1"),
    ({"stages": {"train": {"gpu_per_node": 8}}}, "unknown key 'gpu_per_node': did you mean 'gpus_per_node'?"),
    ({"extra_sbatch_args": ["qos=high"]}, "cluster.extra_sbatch_args: 'qos=high' is not a flag"),
    ({"stages": {"train": {"ntasks_per_node": 3}}}, "3 processes per job (nodes x ntasks_per_node) is not a multiple of tensor x pipeline parallel = 2"),
    ({"stages": {"merge": {"ntasks_per_node": 4}}}, "nodes x ntasks_per_node = 4 differs from merge.ranks=2"),
])
def test_bad_cluster_values_fail_at_load_naming_the_key(tmp_path, cluster, message):
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data.update(cluster=cluster, training={**data["training"], "tensor_model_parallel_size": 2})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    assert message in str(error.value) and str(error.value).startswith(str(path))


def test_tensor_parallel_that_does_not_divide_heads_fails_at_load():
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["training"] = {**data["training"], "tensor_model_parallel_size": 3}
    with pytest.raises(ConfigError, match="training: --tensor-model-parallel-size 3 must divide model.num_attention_heads=4"):
        experiment_from_dict(data, "exp.yaml")


def test_train_ranks_follow_the_experiment():
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["training"] = {**data["training"], "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2}
    assert experiment_from_dict(data).train_ranks == 4  # one replica when the cluster section says nothing
    data["cluster"] = {"stages": {"train": {"nodes": 2, "ntasks_per_node": 4}}}
    assert experiment_from_dict(data).train_ranks == 8


def test_old_flat_cluster_section_still_loads():
    """The shared keys are the same as a stage's: a flat section (no `stages:`) means every stage."""
    cluster = build(ClusterConfig, {"time": "48:00:00", "nodes": 8, "gpus_per_node": 8, "cpus_per_task": 8}, "c")
    assert cluster.resources("merge").nodes == 8 and cluster.resources(None).time == "48:00:00"
