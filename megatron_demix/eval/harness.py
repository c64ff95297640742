"""lm-eval integration: register `megatron-demix` with lm-eval's model registry (lazily).

lm-eval has no plugin discovery: a model outside its package exists only once registered in
the running process. `register()` adds a lazy placeholder (the class is imported on first use)
and imports lm-eval's own backends first, because `lm_eval.api.registry.get_model` imports them
only while the registry is empty: registering first would hide `hf`, `vllm`, ... from the CLI.
"""
from __future__ import annotations

MODEL_NAME = "megatron-demix"
TARGET = "megatron_demix.eval.model:MegatronDemixLM"


def register() -> None:
    import lm_eval.models  # noqa: F401  (see the module docstring)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)
