"""Everything about the merge's ranks, in one place, so the rest of the merge runs (and is tested) in one process.

    comm = world()          # mpiexec / srun --mpi=pmi2: MPI; torchrun: torch.distributed (gloo); else 1 rank
    comm.rank, comm.size, comm.bcast(obj), comm.gather(obj), comm.allgather(obj), comm.barrier()

The merge only exchanges small Python objects (the plan, write records, errors, statistics), so
mpi4py's pickle-based lowercase collectives are all it needs, and torch.distributed's object
collectives over gloo do the same for users without MPI: `GlooComm` has the mpi4py methods.
`launcher()` decides, once, from the environment. `world()` also refuses a launch that would
silently run N copies of a 1-rank merge: SLURM's plain `srun` (MpiDefault=none) starts N tasks,
but without a PMI each one sees an MPI world of size 1.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import resource

from megatron_demix.runtime.errors import FAILED

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun (or any torch.distributed `env://` launcher) sets for every process."""


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


class GlooComm:
    """torch.distributed (gloo, CPU) with mpi4py's lowercase object collectives; joins torchrun's rendezvous."""

    def __init__(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")  # env:// from torchrun
        # Object collectives over NCCL would need a GPU per rank: the few small messages go over gloo.
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # Tear gloo down before the interpreter does: left to exit, its threads were seen to abort a finished
        # merge's rank ("terminate called without an active exception", SIGABRT) under torchrun.
        atexit.register(self._destroy)

    def _destroy(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()

    def bcast(self, obj, root: int = 0):
        box = [obj]
        self._dist.broadcast_object_list(box, src=root, group=self._group)
        return box[0]

    def gather(self, obj, root: int = 0):
        out = [None] * self.size if self.rank == root else None
        self._dist.gather_object(obj, out, dst=root, group=self._group)
        return out

    def allgather(self, obj):
        out = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def barrier(self) -> None:
        self._dist.barrier(group=self._group)


def launcher(env=None) -> str:
    """'torchrun' when torch.distributed's env:// variables are set (and no MPI process manager's), else 'mpi'."""
    env = os.environ if env is None else env
    mpi_launched = any(name in env for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"))
    return "torchrun" if all(name in env for name in TORCHRUN_VARIABLES) and not mpi_launched else "mpi"


class LaunchError(RuntimeError):
    """The merge was started in a way that would not give it the ranks it was granted."""
    exit_status = FAILED


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


def mpiexec_command(mpiexec: str, ranks: int, env=None) -> list[str]:
    """`mpiexec -n ranks`, from a process that may run inside a SLURM allocation (an evaluation task).

    There hydra would start its ranks with `srun`, asking for a new job step, and in an allocation
    whose CPUs the running step already holds SLURM answers "Requested nodes are busy" for ever. With
    the fork launcher the ranks are children of mpiexec: they run on this node, inside the task's own
    step and its CPUs (an I/O-bound merge; give the stage cpus_per_task >= merge.ranks for a core each).
    """
    env = os.environ if env is None else env
    inside_slurm = "SLURM_JOB_ID" in env
    return [mpiexec, *(["-launcher", "fork"] if inside_slurm else []), "-n", str(ranks)]


def world(env=None):
    """The ranks this process was launched with (`launcher`): GlooComm under torchrun, MPI.COMM_WORLD under an
    MPI launcher (when mpi4py is installed), else the 1-rank `SerialComm`; checks the launch."""
    if launcher(env) == "torchrun":
        comm = GlooComm()
    else:
        try:
            from mpi4py import MPI
        except ImportError:
            comm = SerialComm()
        else:
            comm = MPI.COMM_WORLD
    comm = SerialComm() if comm.size == 1 else comm
    check_launch(comm.size, env)
    return comm


def threads_per_rank(comm) -> int:
    """CPU threads each rank of this node should use, so that N ranks do not each start one per core
    (runtime.distributed.cpus_per_rank: SLURM's allocation, else the cores this process may run on,
    shared by the ranks on this node); collective over `comm` (every rank must call it).
    """
    from megatron_demix.runtime.distributed import cpus_per_rank  # imports torch: not at module level

    if isinstance(comm, SerialComm):
        return cpus_per_rank(1)
    if isinstance(comm, GlooComm):
        return cpus_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", comm.size)))
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = local.Get_size()
    local.Free()
    return cpus_per_rank(ranks_here)


def process_seconds() -> float:
    """How long ago this process started (Linux /proc; 0.0 where that is not available)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return max(0.0, float(uptime.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of giving them back to the
    kernel: each stored chunk is loaded into a fresh tensor, and fresh pages from the kernel cost a page
    fault each (measured on a 4 x 1.4 GB merge: 370k faults -> 175k, 0.5 s less system time, same peak
    RSS). For a merge process; a no-op where libc has no `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep the freed top of the heap
