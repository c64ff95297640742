"""Load a checkpoint for inference at a chosen TP/PP, whatever layout it was saved with.

    experiment = checkpoint_experiment("runs/demo/checkpoints/base")   # from its common state
    model = inference_model(experiment, vocab_size, dtype=torch.float32)  # TP=PP=1 unless told
    load_weights(path, model)                                          # resharding on load

A checkpoint written by the trainer (or merged from such by the merge tool, which copies the
first input's common state) is self-describing: its common state holds the experiment as a dict
(`config`), so the architecture and the tokenizer need no flag. `init_inference` starts
torch.distributed (one gloo/NCCL process unless launched by torchrun/srun) and megatron-core's
model-parallel groups, once per process; many models can then be built and loaded in turn.
"""
from __future__ import annotations

from pathlib import Path

import torch

from megatron_demix.checkpoint.layout import CheckpointError, resolve_checkpoint


def checkpoint_common(path: str | Path) -> dict:
    """The non-tensor common state of a torch_dist checkpoint (save root, iter dir or bare dir)."""
    from megatron.core import dist_checkpointing

    from megatron_demix.checkpoint.torch_dist import check_checkpoint_files

    found = resolve_checkpoint(path)
    if found.format != "torch_dist":
        raise CheckpointError(f"{found.path}: a {found.format} checkpoint; convert it to torch_dist to evaluate it")
    check_checkpoint_files(found.path)  # a crafted .metadata or a truncated data file, before megatron-core reads them
    common = dist_checkpointing.load_common_state_dict(str(found.path))
    if not isinstance(common, dict):
        raise CheckpointError(f"{found.path}: its common state is a {type(common).__name__}, not a dict")
    return common


def checkpoint_experiment(path: str | Path):
    """The experiment a checkpoint was trained in (its common state's `config`)."""
    from megatron_demix.experiment import experiment_from_dict

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
    return experiment_from_dict(config, f"{path}: common state config")


def init_inference(tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 1234) -> None:
    """torch.distributed and megatron-core's groups for inference (a no-op when already at this layout)."""
    from megatron.core import parallel_state

    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel

    layout = init_distributed()
    if (parallel_state.model_parallel_is_initialized()
            and parallel_state.get_tensor_model_parallel_world_size() == tensor_parallel
            and parallel_state.get_pipeline_model_parallel_world_size() == pipeline_parallel):
        return
    initialize_model_parallel(ParallelDims(tensor_parallel, pipeline_parallel, layout.world_size), seed=seed)


def inference_model(experiment, vocab_size: int, *, dtype: torch.dtype | None = None,
                    tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """This rank's GPTModel stage in eval mode, uninitialised weights (load or fill them next)."""
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime import device

    init_inference(tensor_parallel, pipeline_parallel, experiment.training.seed)
    model = build_gpt_model(experiment.model, vocab_size, params_dtype=dtype or device.default_params_dtype())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_for_inference(path: str | Path, vocab_size: int, *, experiment=None, dtype: torch.dtype | None = None,
                       tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """(model, experiment): the checkpoint's weights at this TP/PP, resharded on load."""
    from megatron_demix.checkpoint.run_state import load_weights

    experiment = experiment or checkpoint_experiment(path)
    model = inference_model(experiment, vocab_size, dtype=dtype, tensor_parallel=tensor_parallel,
                            pipeline_parallel=pipeline_parallel)
    load_weights(Path(path), model)
    return model, experiment
