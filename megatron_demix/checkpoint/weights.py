"""A model's weights and common state in torch_dist checkpoints, for whoever builds the model (trainer, evaluation, import).

    load_weights(path, model)          # weights only, from any saved TP/PP (resharding on load), shapes checked first
    checkpoint_common(path)            # the non-tensor common state (iteration, the experiment as `config`, ...)
    checkpoint_config(path)            # that experiment dict, ready for experiment.experiment_from_dict
    write_results_in_process()         # before a save: no helper process a job's SIGTERM could kill

A checkpoint written by the trainer (or merged from such by the merge tool, which copies the first
input's common state) is self-describing: its common state holds the experiment as a dict.
"""
from __future__ import annotations

import queue
from pathlib import Path

import torch

from megatron_demix.checkpoint.layout import CheckpointError, resolve_checkpoint
from megatron_demix.checkpoint.torch_dist import check_checkpoint_files


def checkpoint_common(path: str | Path) -> dict:
    """The non-tensor common state of a torch_dist checkpoint (save root, iter dir or bare dir)."""
    from megatron.core import dist_checkpointing

    found = resolve_checkpoint(path)
    if found.format != "torch_dist":
        raise CheckpointError(f"{found.path}: a {found.format} checkpoint; convert it to torch_dist to evaluate it")
    check_checkpoint_files(found.path)  # a crafted .metadata or a truncated data file, before megatron-core reads them
    common = dist_checkpointing.load_common_state_dict(str(found.path))
    if not isinstance(common, dict):
        raise CheckpointError(f"{found.path}: its common state is a {type(common).__name__}, not a dict")
    return common


def checkpoint_config(path: str | Path) -> dict:
    """The experiment (as a dict) a checkpoint was trained in, from its common state's `config`."""
    common = checkpoint_common(path)
    if not isinstance(common.get("config"), dict):
        raise CheckpointError(
            f"{path}: its common state has no experiment `config` (not saved by this trainer or merge tool);"
            " pass experiment=X.yaml so the model architecture and tokenizer are known"
        )
    config = common["config"]
    if isinstance(config.get("model"), dict) and config["model"].get("from_hf"):
        # Saved resolved (every architecture key is there): the Hugging Face directory need not still exist.
        config = {**config, "model": {**config["model"], "from_hf": None}}
    return config


def write_results_in_process() -> None:
    """Make megatron-core's torch_dist writer hand its results back through an in-process queue.

    megatron-core (0.16) collects the write results of every save through a queue served by a
    `multiprocessing.Manager` process, started by the first save and kept for the life of the run.
    SLURM signals every process of a job step on scancel, requeue or the time-limit signal, so
    that helper dies of the SIGTERM the ranks catch to save, and the final save then fails with
    BrokenPipeError, leaving a partial `iter_*`. Our saves are synchronous (`execute_sync` runs the
    writer in this process; its forked writer workers live only for the duration of one save and
    inherit the rank's SIGTERM handler), so a plain `queue.Queue` carries the results and nothing
    long-lived remains to be killed. This is preferred over shielding the helper (ignoring SIGTERM
    in it): a process that ignores SIGTERM outlives its job until SIGKILL, and one fewer process
    per rank is simpler. Set once, before the first save creates the Manager.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not isinstance(filesystem_async._results_queue, queue.Queue):
        filesystem_async._results_queue = queue.Queue()




def _shape_differs(stored: tuple, wanted: tuple, padded_rows: bool) -> bool:
    """megatron-core marks the vocabulary-padded tensors (embedding, output layer) `allow_shape_mismatch`:
    their row count depends on TP (padding to a multiple of make_vocab_size_divisible_by x TP) and
    dist_checkpointing loads the common rows, so only their other dimensions must match."""
    return stored[1:] != wanted[1:] if padded_rows else stored != wanted


def check_shapes(path: Path, model) -> None:
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
    check_checkpoint_files(path.path)  # a crafted .metadata or a truncated data file, before megatron-core reads them
    check_shapes(path.path, model)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path.path))
    model.load_state_dict(loaded["model"])
    return path.path
