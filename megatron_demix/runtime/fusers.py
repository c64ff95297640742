"""megatron-core's compiled fusers, switched off before megatron-core decorates anything with them.

megatron-core decorates about thirty small functions (bias-GeLU/SwiGLU fusions, activations, the L2
norm, attention's output gate) with `megatron.core.jit.jit_fuser`, which is `torch.compile` on torch
2.2+. Decorating imports torch._dynamo and torch._inductor: 2 to 4 s of every process that imports
megatron-core on the 2-core CI machine (`import megatron.core.models.gpt` 6.6-9.0 s with them, 3.9-5.3 s
without), on GPU hosts as on CPU hosts. This project calls none of those functions: model/gpt.py builds
every model with megatron's fusions off (`bias_activation_fusion`, `bias_dropout_fusion`,
`masked_softmax_fusion`, `apply_rope_fusion` all False), torch norms and `F.silu` / `F.gelu`.

So the finder below calls megatron-core's own `disable_jit_fuser()` the moment `megatron.core.jit` is
loaded, before any other megatron module imports `jit_fuser`. It is installed by `megatron_demix`'s
`__init__`, which every entry point imports before megatron-core. Nothing else changes: such a function,
if it were called, would run eagerly, as megatron-core's `disable_jit_fuser` intends.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

JIT_MODULE = "megatron.core.jit"


class _DisableJitFuserOnLoad(importlib.abc.MetaPathFinder):
    """Finds `megatron.core.jit` as the normal path finder does, and disables its fuser once loaded."""

    def find_spec(self, name, path, target=None):
        if name != JIT_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_disable(module):
            exec_module(module)
            module.disable_jit_fuser()

        spec.loader.exec_module = exec_then_disable
        return spec


def disable_megatron_jit_fuser() -> None:
    """Install the finder (idempotent); where megatron-core is already imported, disable the fuser for what follows."""
    if JIT_MODULE in sys.modules:
        sys.modules[JIT_MODULE].disable_jit_fuser()
    elif not any(isinstance(finder, _DisableJitFuserOnLoad) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DisableJitFuserOnLoad())
