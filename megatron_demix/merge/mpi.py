"""Everything about MPI ranks, in one place, so the rest of the merge runs (and is tested) in one process.

    comm = world()          # MPI.COMM_WORLD under mpiexec / srun --mpi=pmi2, else a 1-rank stand-in
    comm.rank, comm.size, comm.bcast(obj), comm.gather(obj), comm.allgather(obj), comm.barrier()

`world()` also refuses a launch that would silently run N copies of a 1-rank merge: SLURM's plain
`srun` (MpiDefault=none) starts N tasks, but without a PMI each one sees an MPI world of size 1.
The merge only exchanges small Python objects (the plan, write records, errors, statistics), so
mpi4py's pickle-based lowercase collectives are all it uses.
"""
from __future__ import annotations

import os
import resource


class SerialComm:
    """The one-process world: the same methods as an mpi4py communicator, doing nothing."""

    rank, size = 0, 1

    def bcast(self, obj, root: int = 0):
        return obj

    def gather(self, obj, root: int = 0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def barrier(self) -> None:
        pass


class LaunchError(RuntimeError):
    """The merge was started in a way that would not give it the ranks it was granted."""


def slurm_tasks(env=None) -> int | None:
    """Tasks of the SLURM job step this process belongs to (None outside an srun step)."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return None  # the batch script itself, or no SLURM at all
    return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)


def check_launch(world_size: int, env=None) -> None:
    tasks = slurm_tasks(env)
    if tasks is not None and tasks > 1 and world_size == 1:
        raise LaunchError(
            f"SLURM started {tasks} tasks but MPI sees a world of 1 in each: plain `srun` does not connect"
            " MPI ranks here. Launch with `srun --mpi=pmi2 ...` (or export SLURM_MPI_TYPE=pmi2), or with mpiexec"
        )


def world(env=None):
    """MPI.COMM_WORLD when mpi4py is installed, else the 1-rank `SerialComm`; checks the launch."""
    try:
        from mpi4py import MPI
    except ImportError:
        comm = SerialComm()
    else:
        comm = MPI.COMM_WORLD
        comm = SerialComm() if comm.Get_size() == 1 else comm
    check_launch(comm.size, env)
    return comm


def threads_per_rank(comm) -> int:
    """CPU threads each rank of this node should use, so that N ranks do not each start one per core.

    The CPUs this process may run on (a SLURM task bound to cores sees only its own) and the node's
    CPUs shared by the ranks on it; collective over `comm` (every rank must call it).
    """
    usable = len(os.sched_getaffinity(0))
    if isinstance(comm, SerialComm):
        return usable
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = local.Get_size()
    local.Free()
    return max(1, min(usable, (os.cpu_count() or 1) // ranks_here))


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
