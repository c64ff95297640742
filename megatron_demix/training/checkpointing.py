"""Checkpoints in Megatron-LM's layout and format: torch_dist through megatron-core dist_checkpointing.

    <save>/iter_0000100/                       metadata.json, .metadata, __R_N.distcp, common.pt
    <save>/latest_checkpointed_iteration.txt   written by rank 0 after every rank finished

- `save_checkpoint`: model, optimizer, LR scheduler, RNG (sharded like the model) and the common
  state: `iteration`, `consumed_train_samples` (the data position), `config` (the experiment as a
  dict) and `model_name`.
- `load_checkpoint`: resume everything from the latest checkpoint of a save root. The RNG state
  is restored only when the TP/PP layout is unchanged (it is per model-parallel rank).
- `load_weights`: weights only, from a checkpoint of any TP/PP (a component starting from the
  base). Global shapes are checked against the checkpoint metadata first, so a base with other
  shapes fails before anything is loaded, naming the tensor and the config key to fix.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy
import torch

from megatron_demix.checkpoint.layout import CheckpointError, iteration_dir, read_tracker, resolve_checkpoint, write_tracker
from megatron_demix.runtime import device
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


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {
        "random": random.getstate(),
        "numpy": numpy.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if device.is_gpu_host() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.is_gpu_host():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _state_dict(model, optimizer, scheduler, *, is_loading: bool, with_rng: bool) -> dict:
    model_sd = model.sharded_state_dict()
    state = {
        "model": model_sd,
        "optimizer": optimizer_sharded_state_dict(optimizer, model_sd, is_loading=is_loading),
        "opt_param_scheduler": scheduler.state_dict(),
    }
    if with_rng:
        state["rng_state"] = _rng_sharded_object(_rng_state())
    return state


def save_checkpoint(save: Path, iteration: int, model, optimizer, scheduler, *, common: dict) -> Path:
    """Write `<save>/iter_%07d` on every rank, then point the tracker at it."""
    from megatron.core import dist_checkpointing

    path = iteration_dir(save, iteration)
    if _rank0():
        # A directory the tracker does not name is a save a kill interrupted: start it afresh.
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    torch.distributed.barrier()
    state = _state_dict(model, optimizer, scheduler, is_loading=False, with_rng=True)
    state.update(common, iteration=iteration, parallel=_layout(), checkpoint_version=3.0)
    dist_checkpointing.save(state, str(path))
    torch.distributed.barrier()
    if _rank0():
        write_tracker(save, iteration)
    torch.distributed.barrier()
    return path


@torch.no_grad()  # the distributed optimizer copies into its fp32 main parameters in place
def load_checkpoint(load: Path, model, optimizer, scheduler) -> dict | None:
    """Resume from the latest checkpoint under `load`; returns its common state, or None if there is none."""
    from megatron.core import dist_checkpointing

    iteration = read_tracker(load) if Path(load).is_dir() else None
    if iteration is None:
        return None
    path = resolve_checkpoint(load).path
    common = dist_checkpointing.load_common_state_dict(str(path))
    same_layout = common.get("parallel") == _layout()
    _check_shapes(path, model)
    state = _state_dict(model, optimizer, scheduler, is_loading=True, with_rng=same_layout)
    loaded = dist_checkpointing.load(state, str(path))
    model.load_state_dict(loaded["model"])
    load_optimizer_state(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    return common


def _shape_differs(stored: tuple, wanted: tuple, padded_rows: bool) -> bool:
    """megatron-core marks the vocabulary-padded tensors (embedding, output layer) `allow_shape_mismatch`:
    their row count depends on TP (padding to a multiple of make_vocab_size_divisible_by x TP) and
    dist_checkpointing loads the common rows, so only their other dimensions must match."""
    return stored[1:] != wanted[1:] if padded_rows else stored != wanted


def _check_shapes(path: Path, model) -> None:
    """Compare every model tensor's global shape with the checkpoint's before loading anything."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    stored = dist_checkpointing.load_tensors_metadata(str(path))
    wanted = model.sharded_state_dict()
    apply_factories(wanted)
    problems = []
    for tensor in nested_values(wanted):
        if not isinstance(tensor, ShardedTensor):
            continue
        if tensor.key not in stored:
            problems.append(f"{tensor.key}: missing from the checkpoint")
        elif _shape_differs(tuple(stored[tensor.key].global_shape), tuple(tensor.global_shape), tensor.allow_shape_mismatch):
            problems.append(f"{tensor.key}: checkpoint {tuple(stored[tensor.key].global_shape)}, this model {tuple(tensor.global_shape)}")
    if problems:
        shown = sorted(set(problems))
        raise CheckpointError(
            f"{path}: the checkpoint does not fit this model ({len(shown)} tensor(s)): "
            + "; ".join(shown[:4]) + ("; ..." if len(shown) > 4 else "")
            + ". The `model:` section (and tokenizer vocabulary) must match the one the checkpoint was"
            " trained with; compare with the `config` in its common.pt"
        )


@torch.no_grad()
def load_weights(pretrained: Path, model) -> Path:
    """Load only the model weights from `pretrained` (save root or iter dir), resharding to this TP/PP."""
    from megatron.core import dist_checkpointing

    path = resolve_checkpoint(pretrained)
    if path.format != "torch_dist":
        raise CheckpointError(f"{path.path}: {path.format} checkpoints cannot initialise training; convert it to torch_dist")
    _check_shapes(path.path, model)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path.path))
    model.load_state_dict(loaded["model"])
    return path.path
