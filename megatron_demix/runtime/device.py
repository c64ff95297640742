"""Everything device-specific in one place: GPU hosts run megatron-core as is, CPU hosts get a shim.

Which path runs where:
- GPU host (torch.cuda.is_available()): NCCL, bf16, Megatron's optimizer and DDP, Transformer
  Engine layers when importable, and Megatron-LM's throughput defaults (`throughput_settings`:
  fusions, overlapped gradient reduce and parameter gather, DataLoader workers with pinned
  memory). `install_cpu_compat()` does nothing.
- CPU host (CI, laptops, the demo): gloo, fp32, a plain torch optimizer (Megatron's optimizer
  wrappers assert CUDA tensors), local layer spec, no fusions, and the compatibility layer below.
Functions that decide by host kind take `gpu=None` (this host) so tests can build a GPU host's
configuration objects on a CPU host without running them.

megatron-core hard-codes CUDA in many places (`torch.cuda.current_device()`, `device="cuda"`,
`.cuda()`, the CUDA RNG tracker). The layer maps all of that onto the CPU:
- `torch.cuda.current_device()` returns the CPU device; `manual_seed(_all)`, `synchronize` and
  `empty_cache` are no-ops; the CUDA RNG get/set (torch.cuda, torch.cuda.random and megatron's
  private `_get_cuda_rng_state` / `_set_cuda_rng_state`) use the CPU generator;
- `torch.cuda.current_stream()` / `default_stream()` return torch's CPU stream, whose
  `wait_event` / `wait_stream` do nothing: megatron-core 0.19's `start_grad_sync` waits on the
  current stream at every gradient reduction, CUDA graphs or not;
- a TorchFunctionMode rewrites `device=` arguments naming CUDA to CPU and makes
  `Tensor.cuda()` / `Tensor.to("cuda")` identities.
It must be installed before megatron-core builds anything; `install_cpu_compat()` is idempotent.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from functools import cache

import torch
from torch.overrides import TorchFunctionMode

_installed = False
_lock = threading.Lock()


def is_gpu_host() -> bool:
    return torch.cuda.is_available()


def _gpu(gpu: bool | None) -> bool:
    return is_gpu_host() if gpu is None else gpu


def host_kind(gpu: bool | None = None) -> str:
    """`gpu` or `cpu`: the label checkpoints record with host-specific state (the RNG)."""
    return "gpu" if _gpu(gpu) else "cpu"


@cache
def has_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def has_apex_grad_accumulation_kernel() -> bool:
    """Apex's `fused_weight_gradient_mlp_cuda`, which the local spec's linear layers need for the fusion."""
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401
    except ImportError:
        return False
    return True


class TransformerEngineMissing(UserWarning):
    """A GPU host runs the local layer spec because Transformer Engine does not import."""


_te_warned = False


def use_transformer_engine(transformer_impl: str = "transformer_engine", *, gpu: bool | None = None,
                           transformer_engine: bool | None = None) -> bool:
    """Whether to build the TE layer spec. A GPU host asked for it without TE warns once, loudly
    (megatron-core's own warning is filtered by runtime/quiet.py), then runs the local spec."""
    global _te_warned
    if not _gpu(gpu) or transformer_impl == "local":
        return False
    if has_transformer_engine() if transformer_engine is None else transformer_engine:
        return True
    if not _te_warned:
        _te_warned = True
        warnings.warn(
            "GPU host without Transformer Engine: training runs megatron-core's local layer spec, whose"
            " attention materialises the full sequence x sequence score matrix (memory and time quadratic in"
            " model.seq_length), without fused RoPE, fused norms or TE's gradient-accumulation fusion: several"
            " times slower at long sequences. Install Transformer Engine (the NGC PyTorch container ships it),"
            " or set model.transformer_impl: local to choose the local spec and silence this warning",
            TransformerEngineMissing, stacklevel=2,
        )
    return False


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """Megatron-LM's throughput settings as this host runs them (`throughput_settings`)."""

    bias_swiglu_fusion: bool
    bias_dropout_fusion: bool
    masked_softmax_fusion: bool
    persist_layer_norm: bool
    gradient_accumulation_fusion: bool
    rope_fusion: bool
    deallocate_pipeline_outputs: bool
    overlap_grad_reduce: bool
    overlap_param_gather: bool
    num_workers: int
    pin_memory: bool
    ckpt_fully_parallel_save: bool


GPU_DATALOADER_WORKERS = 2
"""Megatron-LM's --num-workers default."""


def throughput_settings(flags=None, *, gpu: bool | None = None, transformer_engine: bool | None = None) -> Throughput:
    """Resolve the `training:` flags for a host kind.

    GPU host: each flag as given (Megatron-LM's defaults unless turned off), less what the host lacks:
    RoPE fusion needs TE (megatron-core refuses it otherwise), gradient-accumulation fusion TE or Apex.
    CPU host: every fusion off (the fused kernels are CUDA kernels or torch.compile'd functions, and
    runtime/fusers.py turns megatron's compiler off there), no overlap (the distributed optimizer it
    works with needs CUDA; gloo gains nothing), no loader workers unless asked (they would compete
    with the training threads for the cores), no pinned memory (there is no device to copy to).
    Pipeline outputs are freed and checkpoint saves are spread over data-parallel ranks on both.
    """
    # `flags` is a TrainingConfig (its docstrings name each flag); without one (evaluation, the merge) every
    # switch is at its default, on, as in Megatron-LM.
    flag = (lambda name: True) if flags is None else (lambda name: getattr(flags, name))
    workers = None if flags is None else flags.num_workers
    if not _gpu(gpu):
        return Throughput(
            bias_swiglu_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
            gradient_accumulation_fusion=False, rope_fusion=False, deallocate_pipeline_outputs=True,
            overlap_grad_reduce=False, overlap_param_gather=False, num_workers=workers or 0, pin_memory=False,
            ckpt_fully_parallel_save=flag("ckpt_fully_parallel_save"),
        )
    te = has_transformer_engine() if transformer_engine is None else transformer_engine
    return Throughput(
        bias_swiglu_fusion=flag("bias_swiglu_fusion"),
        bias_dropout_fusion=flag("bias_dropout_fusion"),
        masked_softmax_fusion=flag("masked_softmax_fusion"),
        persist_layer_norm=flag("persist_layer_norm"),
        gradient_accumulation_fusion=flag("gradient_accumulation_fusion") and (te or has_apex_grad_accumulation_kernel()),
        rope_fusion=flag("rope_fusion") and te,
        deallocate_pipeline_outputs=True,
        overlap_grad_reduce=flag("overlap_grad_reduce"),
        overlap_param_gather=flag("overlap_param_gather"),
        num_workers=GPU_DATALOADER_WORKERS if workers is None else workers,
        pin_memory=True,
        ckpt_fully_parallel_save=flag("ckpt_fully_parallel_save"),
    )


def device() -> torch.device:
    """The device this process computes on."""
    return torch.device("cuda", torch.cuda.current_device()) if is_gpu_host() else torch.device("cpu")


def distributed_backend() -> str:
    return "nccl" if is_gpu_host() else "gloo"


def default_params_dtype(precision: str = "auto") -> torch.dtype:
    """Training dtype: bf16 on GPU hosts by default; fp32 on CPU (bf16 matmuls are slow there)."""
    if precision == "auto":
        return torch.bfloat16 if is_gpu_host() else torch.float32
    from megatron_demix.runtime.dtypes import torch_dtype

    return torch_dtype(precision)


def _is_cuda(value) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    if isinstance(value, str):
        return value.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects tensor creation and moves that name CUDA to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if _is_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _cpu_rng_state(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(state: torch.Tensor, *_args, **_kwargs) -> None:
    torch.set_rng_state(state)


def install_cpu_compat() -> None:
    """Install the CPU compatibility layer for megatron-core; a no-op on GPU hosts."""
    global _installed
    if is_gpu_host():
        return
    with _lock:
        if _installed:
            return
        cpu = torch.device("cpu")
        torch.cuda.current_device = lambda: cpu
        torch.cuda.current_stream = torch.cuda.default_stream = torch.cpu.current_stream
        for name in ("manual_seed", "manual_seed_all", "synchronize", "empty_cache"):
            setattr(torch.cuda, name, lambda *a, **k: None)
        torch.cuda.get_rng_state = torch.cuda.random.get_rng_state = _cpu_rng_state
        torch.cuda.set_rng_state = torch.cuda.random.set_rng_state = _set_cpu_rng_state

        from megatron.core.tensor_parallel import random as megatron_random

        megatron_random._get_cuda_rng_state = _cpu_rng_state
        megatron_random._set_cuda_rng_state = _set_cpu_rng_state
        _CudaToCpuMode().__enter__()  # stays active for the life of the process
        _installed = True
