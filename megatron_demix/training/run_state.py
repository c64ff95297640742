"""The trainer's save and resume state in Megatron-LM's layout and format (torch_dist through megatron-core).

    <save>/iter_0000100/                       metadata.json, .metadata, __R_N.distcp, common.pt
    <save>/latest_checkpointed_iteration.txt   written by rank 0 after every rank finished

- `save_checkpoint`: model, optimizer, LR scheduler, RNG (sharded like the model) and the common
  state: `iteration`, `consumed_train_samples` (the data position), `config` (the experiment as a
  dict) and `model_name`.
- `load_checkpoint`: resume everything from the latest checkpoint of a save root. The RNG state
  is restored only when the TP/PP layout is unchanged (it is per model-parallel rank); its device
  generators only on the host kind that saved them (`restore_rng_state`), so a checkpoint resumes on
  GPU and CPU hosts alike.
- `remove_incomplete_checkpoints` (at start) and `prune_checkpoints` (after each save, with
  training.keep_checkpoints): the save root holds only complete checkpoints, at most N of them.
Weights alone (a component starting from the base, evaluation) load with checkpoint/weights.py.

Saves must survive a SIGTERM sent to every process of the job (SLURM's scancel, requeue and
time limit signal the whole step, not only the ranks): see `checkpoint.weights.write_results_in_process`.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy
import torch

from megatron_demix.checkpoint.layout import (
    CheckpointError, iteration_dir, iteration_dirs, read_tracker, resolve_checkpoint, write_tracker,
)
from megatron_demix.checkpoint.torch_dist import check_checkpoint_files
from megatron_demix.checkpoint.weights import check_shapes, write_results_in_process
from megatron_demix.runtime import device
from megatron_demix.runtime.errors import FAILED
from megatron_demix.runtime.files import write_failure
from megatron_demix.training.optimizer import load_optimizer_state, optimizer_sharded_state_dict


def _rank0() -> bool:
    return torch.distributed.get_rank() == 0


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size()}


def _rng_sharded_object(state):
    """This rank's RNG state as a ShardedObject over (pp, tp); data-parallel replicas save once."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state", state,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(),
    )


def rng_state() -> dict:
    """Every generator, labelled with the host kind that made the device ones: `random`, `numpy` and
    `torch` (the CPU generator) have one format on every host; `cuda` and megatron's `tracker` states
    are CUDA Philox states on GPU hosts and CPU generator states under runtime/device.py's shim."""
    from megatron.core import tensor_parallel

    return {
        "host": device.host_kind(),
        "random": random.getstate(),
        "numpy": numpy.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if device.is_gpu_host() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def restore_rng_state(state: dict, *, gpu: bool | None = None) -> bool:
    """Restore what this host kind can read: the host-independent generators always, the device ones
    only from a checkpoint of the same host kind (handing a CPU state to CUDA's generator, or the reverse,
    fails). Across host kinds the device generators keep the seeding `initialize_model_parallel` gave them
    (they drive dropout, 0 in this project's models). Returns whether the device generators were restored.
    Checkpoints from before the label are told apart by their `cuda` entry (None: a CPU host)."""
    random.setstate(state["random"])
    numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved_on = state.get("host", "cpu" if state["cuda"] is None else "gpu")
    if saved_on != device.host_kind(gpu):
        return False
    from megatron.core import tensor_parallel

    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    return True


def _state_dict(model, optimizer, scheduler, *, is_loading: bool, with_rng: bool) -> dict:
    model_sd = model.sharded_state_dict()
    state = {
        "model": model_sd,
        "optimizer": optimizer_sharded_state_dict(optimizer, model_sd, is_loading=is_loading),
        "opt_param_scheduler": scheduler.state_dict(),
    }
    if with_rng:
        state["rng_state"] = _rng_sharded_object(rng_state())
    return state


class SaveFailed(RuntimeError):
    """The file system refused a checkpoint write (full, read-only): training stops, exit 1."""
    exit_status = FAILED


def _save_strategy(fully_parallel: bool):
    """torch_dist, with the writing of replicated tensors spread over the data-parallel ranks when
    `fully_parallel` (Megatron-LM's --ckpt-fully-parallel-save, its default); None: megatron's default
    (data-parallel rank 0 writes every replicated tensor)."""
    if not fully_parallel:
        return None
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    return FullyParallelSaveStrategyWrapper(
        get_default_save_sharded_strategy("torch_dist"), parallel_state.get_data_parallel_group(with_context_parallel=True)
    )


def save_checkpoint(save: Path, iteration: int, model, optimizer, scheduler, *, common: dict, fully_parallel: bool = True) -> Path:
    """Write `<save>/iter_%07d` on every rank (replicated tensors spread over data-parallel ranks when
    `fully_parallel`), then point the tracker at it."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    write_results_in_process()
    path = iteration_dir(save, iteration)
    if _rank0():
        # A directory the tracker does not name is a save a kill interrupted: start it afresh.
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    torch.distributed.barrier()
    state = _state_dict(model, optimizer, scheduler, is_loading=False, with_rng=True)
    state.update(common, iteration=iteration, parallel=_layout(), checkpoint_version=3.0)
    try:
        dist_checkpointing.save(state, str(path), sharded_strategy=_save_strategy(fully_parallel))
    except (OSError, RuntimeError, CheckpointException) as error:
        # Every rank gets the CheckpointException; the coordinator's holds each rank's (error, traceback).
        failures = list(error.failures.values()) if isinstance(error, CheckpointException) else []
        cause = failures[0][0] if failures and isinstance(failures[0], tuple) else error
        message = write_failure(path, cause)
        if message is None:
            raise
        if _rank0():
            shutil.rmtree(path, ignore_errors=True)
        latest = read_tracker(save)
        shown = "none" if latest is None else f"iteration {latest}"
        raise SaveFailed(f"{message}; the latest complete checkpoint is {shown}") from None
    torch.distributed.barrier()
    if _rank0():
        write_tracker(save, iteration)
    torch.distributed.barrier()
    return path


def remove_incomplete_checkpoints(save: Path) -> list[Path]:
    """Delete (rank 0) the `iter_*` directories of `save` that a killed save left: those newer than
    the tracker (written only after every rank finished) and those without `.metadata` (DCP writes
    it last). A complete directory in a root without a tracker is kept: it may be a user's copy.
    Returns the directories removed."""
    latest = read_tracker(save) if Path(save).is_dir() else None
    if latest == "release":
        return []
    def unfinished(path: Path) -> bool:  # (legacy mp_rank_* checkpoints have no .metadata: leave them)
        return not (path / ".metadata").is_file() and not any(path.glob("mp_rank_*"))

    removed = [path for it, path in iteration_dirs(save).items() if unfinished(path) or (latest is not None and it > latest)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def prune_checkpoints(save: Path, keep: int) -> list[Path]:
    """Delete (rank 0) all but the newest `keep` complete checkpoints of `save` (0: keep all)."""
    latest = read_tracker(save)
    if not keep or not isinstance(latest, int):
        return []
    complete = sorted(it for it in iteration_dirs(save) if it <= latest)
    removed = [iteration_dir(save, it) for it in complete[:-keep]]
    for path in removed:
        shutil.rmtree(path)
    return removed


@torch.no_grad()  # the distributed optimizer copies into its fp32 main parameters in place
def load_checkpoint(load: Path, model, optimizer, scheduler) -> dict | None:
    """Resume from the latest checkpoint under `load`; returns its common state, or None if there is none."""
    from megatron.core import dist_checkpointing

    iteration = read_tracker(load) if Path(load).is_dir() else None
    if iteration is None:
        return None
    path = resolve_checkpoint(load).path
    check_checkpoint_files(path)  # a crafted .metadata or a truncated data file, before megatron-core reads them
    common = dist_checkpointing.load_common_state_dict(str(path))
    same_layout = common.get("parallel") == _layout()
    check_shapes(path, model)
    state = _state_dict(model, optimizer, scheduler, is_loading=True, with_rng=same_layout)
    loaded = dist_checkpointing.load(state, str(path))
    model.load_state_dict(loaded["model"])
    load_optimizer_state(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_layout:
        restore_rng_state(loaded["rng_state"])
    return common
