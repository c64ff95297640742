"""A model for inference at a chosen TP/PP, whatever layout its checkpoint was saved with.

    model = inference_model(experiment.model, vocab_size, seed=experiment.training.seed)   # TP=PP=1 unless told
    model = load_for_inference(path, experiment.model, vocab_size)                         # resharding on load

`init_inference` starts torch.distributed (one gloo/NCCL process unless launched by torchrun/srun)
and megatron-core's model-parallel groups, once per process; many models can then be built and
loaded in turn. The architecture comes from the caller (an experiment file, or a checkpoint's
common state: `experiment.checkpoint_experiment`).
"""
from __future__ import annotations

from pathlib import Path

import torch


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


def inference_model(model_config, vocab_size: int, *, seed: int = 1234, dtype: torch.dtype | None = None,
                    tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """This rank's GPTModel stage of `model_config` (a ModelConfig) in eval mode, uninitialised weights (load or fill them next)."""
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime import device

    init_inference(tensor_parallel, pipeline_parallel, seed)
    model = build_gpt_model(model_config, vocab_size, params_dtype=dtype or device.default_params_dtype())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_for_inference(path: str | Path, model_config, vocab_size: int, *, seed: int = 1234, dtype: torch.dtype | None = None,
                       tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """The checkpoint's weights in a model of `model_config` at this TP/PP, resharded on load."""
    from megatron_demix.checkpoint.weights import load_weights

    model = inference_model(model_config, vocab_size, seed=seed, dtype=dtype, tensor_parallel=tensor_parallel,
                            pipeline_parallel=pipeline_parallel)
    load_weights(Path(path), model)
    return model
