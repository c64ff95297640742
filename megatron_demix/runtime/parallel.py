"""Model-parallel layout: check the arithmetic, then initialise megatron-core's groups.

    dims = ParallelDims(tensor=2, pipeline=1, world=torch.distributed.get_world_size())
    initialize_model_parallel(dims, seed=1234)

The data-parallel size is what is left: world / (tensor * pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_demix.runtime.errors import ConfigError
from megatron_demix.runtime import device


@dataclass(frozen=True)
class ParallelDims:
    tensor: int
    pipeline: int
    world: int

    def __post_init__(self):
        if self.tensor < 1 or self.pipeline < 1 or self.world % (self.tensor * self.pipeline):
            raise ConfigError(
                f"--tensor-model-parallel-size {self.tensor} x --pipeline-model-parallel-size {self.pipeline}"
                f" = {self.tensor * self.pipeline} does not divide the world size {self.world}:"
                " launch a multiple of TP x PP processes, or change the parallel sizes"
            )

    @property
    def data(self) -> int:
        return self.world // (self.tensor * self.pipeline)


def initialize_model_parallel(dims: ParallelDims, seed: int) -> None:
    """(Re)build megatron-core's TP/PP/DP groups and seed its RNG tracker (different per TP rank)."""
    from megatron.core import parallel_state, tensor_parallel

    device.install_cpu_compat()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=dims.tensor, pipeline_model_parallel_size=dims.pipeline
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
