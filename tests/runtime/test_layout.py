"""Rank layout from each launcher's environment, ranks and threads per node, and the parallel arithmetic (in-process),
plus threads per rank as a real SLURM job step sets them up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.runtime.distributed import cpus_per_rank, rank_layout, ranks_on_this_node
from megatron_demix.runtime.parallel import ParallelDims


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29511"}
    assert rank_layout(env) == (layout := rank_layout(env))
    assert (layout.rank, layout.world_size, layout.local_rank, layout.master_addr, layout.master_port, layout.launcher) == (
        3, 4, 1, "node7", 29511, "torchrun")


def test_srun_environment_derives_a_port_per_array_task():
    base = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0", "MASTER_ADDR": "node1",
            "SLURM_ARRAY_JOB_ID": "1000"}
    task0, task1 = (rank_layout({**base, "SLURM_ARRAY_TASK_ID": t}) for t in ("0", "1"))
    assert (task0.rank, task0.world_size, task0.local_rank, task0.launcher) == (5, 8, 1, "srun")
    assert task0.master_port != task1.master_port and all(20000 <= p < 40000 for p in (task0.master_port, task1.master_port))
    assert rank_layout({**base, "SLURM_ARRAY_TASK_ID": "0"}).master_port == task0.master_port  # same on every rank


def test_batch_script_without_a_step_is_a_lone_process():
    """The batch shell has SLURM_PROCID but no SLURM_STEP_ID: it is not one of the srun ranks."""
    layout = rank_layout({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "MASTER_PORT": "1234"})
    assert (layout.rank, layout.world_size, layout.master_port, layout.launcher) == (0, 1, 1234, "none")


@pytest.mark.parametrize("env, expected", [
    ({"LOCAL_WORLD_SIZE": "4", "SLURM_TASKS_PER_NODE": "8"}, 4),   # torchrun wins
    ({"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "8(x4)"}, 2),
    ({"SLURM_TASKS_PER_NODE": "8(x4)"}, 8),
    ({"SLURM_TASKS_PER_NODE": "3,2"}, 3),
    ({}, 1),
])
def test_ranks_on_this_node(env, expected):
    assert ranks_on_this_node(env) == expected


CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("ranks_here, env, expected", [
    (1, {}, CORES),                                                  # alone, no scheduler: every core it may use
    (CORES, {}, 1),                                                  # torchrun-like: the cores split among ranks
    (1, {"SLURM_CPUS_ON_NODE": "1"}, 1),                             # SLURM gave one CPU: one thread, not CORES
    (2, {"SLURM_CPUS_ON_NODE": str(4 * CORES)}, CORES),              # an allocation above the cores: capped by affinity
    (1, {"SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "64"}, 1),  # --cpus-per-task wins
])
def test_cpus_per_rank_follows_the_allocation(ranks_here, env, expected):
    assert cpus_per_rank(ranks_here, env) == expected


@pytest.mark.slurm
def test_a_slurm_rank_uses_the_cpus_it_was_given(slurm_cluster):
    """Without core binding (the local cluster: task/none) every process sees all cores; a 1-CPU job must still
    run 1 thread, or concurrent jobs oversubscribe the node."""
    probe = ("from megatron_demix.runtime.distributed import share_cpus; import torch; share_cpus(); "
             "print('threads', torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for flags, expected in ((["-n", "1"], 1), (["-n", "1", f"--cpus-per-task={CORES}"], CORES)):
        out = subprocess.run(["srun", *flags, sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["threads", str(expected)], (flags, out.stdout)


def test_parallel_dims():
    assert ParallelDims(tensor=2, pipeline=2, world=8).data == 2
    with pytest.raises(ConfigError, match="= 4 does not divide the world size 6"):
        ParallelDims(tensor=2, pipeline=2, world=6)
