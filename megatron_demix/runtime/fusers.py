"""megatron-core's compiled fusers: switched off on CPU hosts before megatron-core decorates anything with them.

megatron-core decorates about thirty small functions (bias-GeLU/SwiGLU fusions, activations, the L2
norm, attention's output gate) with `megatron.core.jit.jit_fuser`, which is `torch.compile` on torch
2.2+. Decorating imports torch._dynamo and torch._inductor: 2 to 4 s of every process that imports
megatron-core on the 2-core CI machine (`import megatron.core.models.gpt` 6.6-9.0 s with them, 3.9-5.3 s
without).

Which host does what:
- CPU host: megatron-core's own `disable_jit_fuser()` is called the moment `megatron.core.jit` is
  loaded (runtime/import_hooks.py), before any other megatron module imports `jit_fuser`. The CPU host
  calls none of those functions (runtime/device.py `throughput_settings`: every fusion off there), so
  this saves the start-up and changes nothing else; such a function, if it were called, would run eagerly.
- GPU host: the fuser is left as megatron-core sets it, as in Megatron-LM: the bias+SwiGLU and
  bias+dropout fusions that GPU hosts switch on are those compiled functions, and would run eagerly
  (unfused) without it.
The hook is installed by `megatron_demix`'s `__init__`, which every entry point imports before
megatron-core; the host is asked only once megatron-core (and so torch) is being imported, so commands
that never import torch stay free of it. (megatron-core 0.19 imports torch._dynamo and torch._inductor
regardless: its MoE router decorates a class with `@torch.compile` at import.)
"""
from __future__ import annotations

from megatron_demix.runtime.import_hooks import after_import

JIT_MODULE = "megatron.core.jit"


def configure_jit_fuser(jit_module, gpu: bool | None = None) -> None:
    """Disable megatron's fuser on CPU hosts; leave it as megatron-core has it on GPU hosts."""
    from megatron_demix.runtime import device

    if device.host_kind(gpu) == "cpu":
        jit_module.disable_jit_fuser()


def disable_megatron_jit_fuser() -> None:
    """Configure the fuser (`configure_jit_fuser`) as soon as `megatron.core.jit` loads (at once if it
    already has); idempotent."""
    after_import(JIT_MODULE, configure_jit_fuser)
