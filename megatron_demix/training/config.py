"""The `training:` section: parallelism, batch, schedule, budgets and checkpointing.

Field names follow Megatron-LM's flags, so `--tensor-model-parallel-size 2` on any launch script
overrides `training.tensor_model_parallel_size`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_demix.config.base import fail, require_at_least
from megatron_demix.runtime.dtypes import dtype_names

Precision = Literal[("auto", *dtype_names(computes=True))]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingConfig:
    """How the base and each component are trained."""

    tensor_model_parallel_size: int = 1
    """Tensor parallel size (TP): each layer split over this many GPUs."""
    pipeline_model_parallel_size: int = 1
    """Pipeline parallel size (PP): the layers split into this many stages."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all ranks (gradient accumulation makes up the rest)."""
    lr: float = 3e-3
    """Peak learning rate, after warmup."""
    min_lr: float = 6e-4
    """Cosine decay ends here (the paper: 20% of peak)."""
    lr_warmup_iters: int = 10
    """Linear warmup iterations."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    clip_grad: float = 1.0
    """Gradient norm clipping (0: off)."""
    base_train_iters: int = 100
    """Iterations of the base model on the general data."""
    train_iters: int = 50
    """Iterations of each component, continued from the base."""
    train_tokens: int | None = None
    """Component budget in tokens; when set it overrides train_iters (rounded up to whole iterations)."""
    beta: float = 0.5
    """Share of general data in every component's blend (the paper's beta)."""
    seed: int = 1234
    """Seeds initialisation, data order and dropout."""
    save_interval: int = 0
    """Save every N iterations (0: only at the end)."""
    keep_checkpoints: int = 0
    """Keep only the newest N `iter_*` checkpoints of a save root (0: keep all). Default 0, as
    Megatron-LM keeps every checkpoint: deleting a user's checkpoints must be asked for; set it
    (e.g. 2) for long runs with a small save_interval so the disk does not fill."""
    check_for_nan_in_loss_and_grad: bool = True
    """Stop with an error, without saving, when the loss or the gradient norm is not finite
    (Megatron-LM's --check-for-nan-in-loss-and-grad); the last good checkpoint stays the latest."""
    eval_interval: int = 25
    """Validate on every domain every N iterations (0: only at the end)."""
    eval_iters: int = 2
    """Validation batches per domain."""
    log_interval: int = 5
    """Log loss, rate and ETA every N iterations."""
    precision: Precision = "auto"
    """`auto`: bf16 on GPU hosts, fp32 on CPU (see runtime/device.py)."""
    dataloader: Literal["torch", "dali"] = "torch"
    """`torch`: batches read in the training process; `dali`: training batches through an NVIDIA DALI
    pipeline (`pip install -e .[dali]`; see data/dali.py)."""


    # --- throughput (Megatron-LM's flags and defaults; runtime/device.py `throughput_settings` applies them
    # on GPU hosts only: CPU hosts run unfused, unoverlapped, and say why there)
    bias_swiglu_fusion: bool = True
    """Fuse the bias add with SwiGLU (megatron-core's jit-compiled kernel); GPU hosts, SwiGLU models."""
    bias_dropout_fusion: bool = True
    """Fuse bias + dropout + residual add; GPU hosts."""
    masked_softmax_fusion: bool = True
    """Fused scale + mask + softmax in the local spec's attention (no effect under TE attention); GPU hosts."""
    persist_layer_norm: bool = True
    """Apex's persistent layer-norm kernel where it applies; GPU hosts."""
    gradient_accumulation_fusion: bool = True
    """Accumulate weight gradients straight into the fp32 main_grad buffers in the GEMM (TE, or Apex's
    fused_weight_gradient_mlp_cuda under the local spec; off where neither is installed); GPU hosts."""
    rope_fusion: bool = True
    """Fused RoPE (needs Transformer Engine; off without it); GPU hosts."""
    overlap_grad_reduce: bool = True
    """Overlap the data-parallel gradient reduce-scatter with the backward pass; GPU hosts (with the
    distributed optimizer). On by default, unlike Megatron-LM's flag: its GPT recipes all pass it, and a
    component run gains from it at every data-parallel size above 1."""
    overlap_param_gather: bool = True
    """Overlap the distributed optimizer's parameter all-gather with the next forward pass; GPU hosts.
    On by default, unlike Megatron-LM's flag, for the same reason as overlap_grad_reduce."""
    num_workers: int | None = None
    """DataLoader worker processes reading training batches ahead of the step (unset: Megatron-LM's 2 on
    GPU hosts, 0 on CPU hosts, where workers would take cores from the training threads)."""
    ckpt_fully_parallel_save: bool = True
    """Spread the writing of replicated checkpoint tensors over the data-parallel ranks (Megatron-LM's
    default; every host)."""

    def __post_init__(self):
        require_at_least(self, 1, "tensor_model_parallel_size", "pipeline_model_parallel_size", "micro_batch_size",
                         "global_batch_size", "train_iters", "base_train_iters", "train_tokens", "eval_iters",
                         "log_interval")
        require_at_least(self, 0, "lr_warmup_iters", "seed", "save_interval", "eval_interval", "keep_checkpoints",
                         "weight_decay", "clip_grad", "min_lr", "num_workers")
        if self.lr <= 0:
            fail("lr", f"{self.lr} must be > 0")
        if self.global_batch_size % self.micro_batch_size:
            fail("global_batch_size", f"{self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")
        if not 0.0 <= self.beta < 1.0:
            fail("beta", f"{self.beta} must be in [0, 1): the candidate share 1 - beta must be positive")
        if self.min_lr > self.lr:
            fail("min_lr", f"{self.min_lr} exceeds lr={self.lr}")
