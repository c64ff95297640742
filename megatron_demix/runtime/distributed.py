"""Rank layout from the launcher (torchrun, SLURM srun, or nothing) and torch.distributed setup.

One function, `init_distributed()`, so every entry point starts the same way:
- torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- `srun` sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master is the first host of
  SLURM_JOB_NODELIST and the port is derived from the job id (so array tasks do not collide);
- a plain `python` run is rank 0 of 1 (on a free port unless MASTER_PORT is set).
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch

from megatron_demix.runtime import device


@dataclass(frozen=True)
class RankLayout:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_layout(env: dict | None = None) -> RankLayout:
    """Read the rank layout from the environment of the launcher that started this process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return RankLayout(
            int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        job = int(env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0")))
        task = int(env.get("SLURM_ARRAY_TASK_ID", "0"))
        return RankLayout(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "")),
            int(env.get("MASTER_PORT") or 20000 + (job * 7 + task) % 20000), "srun",
        )
    # A lone process: any free port, so concurrent single-process runs never collide.
    return RankLayout(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT") or _free_port()), "none")


def ranks_on_this_node(env: dict | None = None) -> int:
    """Processes of this job on this node: torchrun's LOCAL_WORLD_SIZE, or srun's tasks-per-node."""
    env = os.environ if env is None else env
    if "LOCAL_WORLD_SIZE" in env:
        return int(env["LOCAL_WORLD_SIZE"])
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per_node:  # e.g. "2" or "8(x4)": the first number is this layout's tasks per node
        return int(per_node.split("(")[0].split(",")[0])
    return 1


def cpus_per_rank(ranks_here: int, env: dict | None = None) -> int:
    """CPU threads one rank should use when `ranks_here` processes of its job share this node.

    SLURM's allocation counts first (`--cpus-per-task`, else the job's CPUs on this node shared by
    its ranks): a site without core binding (no cgroups, `TaskPlugin=task/none`) lets every process
    see every core, and each rank taking all of them oversubscribes the node whenever other jobs
    run there. A process already bound to cores (`sched_getaffinity`) never gets more than those.
    """
    env = os.environ if env is None else env
    usable = len(os.sched_getaffinity(0))
    if env.get("SLURM_CPUS_PER_TASK"):
        allocated = int(env["SLURM_CPUS_PER_TASK"])
    elif env.get("SLURM_CPUS_ON_NODE"):
        allocated = int(env["SLURM_CPUS_ON_NODE"]) // ranks_here
    else:
        allocated = usable // ranks_here
    return max(1, min(usable, allocated))


def share_cpus(env: dict | None = None) -> None:
    """Give each rank its share of the node's cores (`cpus_per_rank`), unless OMP_NUM_THREADS says otherwise.

    torchrun sets OMP_NUM_THREADS=1 for several ranks; srun sets nothing, and then every rank's
    torch starts one thread per core: N ranks on N cores run N^2 threads and slow down severalfold
    (measured here: a 1-rank tiny-model run took 43 s at 1 thread and 215 s at 2 threads while the
    2-core machine was busy with other jobs).
    """
    env = os.environ if env is None else env
    if "OMP_NUM_THREADS" not in env:
        torch.set_num_threads(cpus_per_rank(ranks_on_this_node(env), env))


def init_distributed(timeout_minutes: float = 30) -> RankLayout:
    """Start the default process group (NCCL on GPU hosts, gloo on CPU) if not started yet."""
    layout = rank_layout()
    if torch.distributed.is_initialized():
        return layout
    device.install_cpu_compat()
    share_cpus()
    if device.is_gpu_host():
        torch.cuda.set_device(layout.local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group(
        backend=device.distributed_backend(),
        init_method=f"tcp://{layout.master_addr}:{layout.master_port}",
        rank=layout.rank,
        world_size=layout.world_size,
        timeout=timedelta(minutes=timeout_minutes),
    )
    return layout
