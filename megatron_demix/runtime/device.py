"""Everything device-specific in one place: GPU hosts run megatron-core as is, CPU hosts get a shim.

Which path runs where:
- GPU host (torch.cuda.is_available()): NCCL, bf16, Megatron's optimizer and DDP, Transformer
  Engine layers when importable. `install_cpu_compat()` does nothing.
- CPU host (CI, laptops, the demo): gloo, fp32, a plain torch optimizer (Megatron's optimizer
  wrappers assert CUDA tensors), local layer spec, and the compatibility layer below.

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

import torch
from torch.overrides import TorchFunctionMode

_installed = False
_lock = threading.Lock()


def is_gpu_host() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device this process computes on."""
    return torch.device("cuda", torch.cuda.current_device()) if is_gpu_host() else torch.device("cpu")


def distributed_backend() -> str:
    return "nccl" if is_gpu_host() else "gloo"


def default_params_dtype(precision: str = "auto") -> torch.dtype:
    """Training dtype: bf16 on GPU hosts by default; fp32 on CPU (bf16 matmuls are slow there)."""
    if precision == "auto":
        return torch.bfloat16 if is_gpu_host() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


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
