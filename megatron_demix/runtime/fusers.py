"""megatron-core's compiled fusers, switched off before megatron-core decorates anything with them.

megatron-core decorates about thirty small functions (bias-GeLU/SwiGLU fusions, activations, the L2
norm, attention's output gate) with `megatron.core.jit.jit_fuser`, which is `torch.compile` on torch
2.2+. Decorating imports torch._dynamo and torch._inductor: 2 to 4 s of every process that imports
megatron-core on the 2-core CI machine (`import megatron.core.models.gpt` 6.6-9.0 s with them, 3.9-5.3 s
without), on GPU hosts as on CPU hosts. This project calls none of those functions: model/gpt.py builds
every model with megatron's fusions off (`bias_activation_fusion`, `bias_dropout_fusion`,
`masked_softmax_fusion`, `apply_rope_fusion` all False), torch norms and `F.silu` / `F.gelu`.

So megatron-core's own `disable_jit_fuser()` is called the moment `megatron.core.jit` is loaded
(runtime/import_hooks.py), before any other megatron module imports `jit_fuser`. It is installed by `megatron_demix`'s
`__init__`, which every entry point imports before megatron-core. Nothing else changes: such a function,
if it were called, would run eagerly, as megatron-core's `disable_jit_fuser` intends. (megatron-core
0.19 imports torch._dynamo and torch._inductor regardless: its MoE router decorates a class with
`@torch.compile` at import. The fusers are still off there.)
"""
from __future__ import annotations

from megatron_demix.runtime.import_hooks import after_import

JIT_MODULE = "megatron.core.jit"


def _disable(jit_module) -> None:
    jit_module.disable_jit_fuser()


def disable_megatron_jit_fuser() -> None:
    """Disable the fuser as soon as `megatron.core.jit` loads (at once if it already has); idempotent."""
    after_import(JIT_MODULE, _disable)
