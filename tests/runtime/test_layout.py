"""Rank layout from each launcher's environment, ranks per node, and the parallel arithmetic (in-process)."""
from __future__ import annotations

import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.runtime.distributed import rank_layout, ranks_on_this_node
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


def test_parallel_dims():
    assert ParallelDims(tensor=2, pipeline=2, world=8).data == 2
    with pytest.raises(ConfigError, match="= 4 does not divide the world size 6"):
        ParallelDims(tensor=2, pipeline=2, world=6)
