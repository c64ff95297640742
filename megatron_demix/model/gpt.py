"""Build a megatron-core GPTModel from the `model:` config.

The same builder serves training, checkpoint loading (any TP/PP) and evaluation. Which layers
run where is decided here and nowhere else:
- GPU host with Transformer Engine importable: the TE layer spec (fused kernels, fp8-ready);
- otherwise (CPU hosts, GPU hosts without TE): megatron-core's local spec (plain torch modules).
Both specs produce the same parameter names in `sharded_state_dict()`, so checkpoints move
between them.
"""
from __future__ import annotations

import torch

from megatron_demix.model.config import ModelConfig, check_parallel_fits  # noqa: F401  (re-exported: callers import it here)
from megatron_demix.runtime import device


def padded_vocab_size(vocab_size: int, model: ModelConfig, tensor_parallel: int) -> int:
    """Megatron-LM's padding: a multiple of make_vocab_size_divisible_by x TP (the embedding splits by TP)."""
    multiple = model.make_vocab_size_divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def _use_transformer_engine() -> bool:
    if not device.is_gpu_host():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def layer_spec(model: ModelConfig):
    from megatron.core.models.gpt import gpt_layer_specs

    if _use_transformer_engine():
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=model.qk_layernorm, normalization=model.normalization)


def _no_cuda_graph_modules(config_class) -> dict:
    """No CUDA graphs, in the spelling of the installed megatron-core: the field is `cuda_graph_modules`
    from 0.19 (`cuda_graph_scope` is deprecated there), `cuda_graph_scope` before. Both releases warn
    that their own default ("full") is deprecated, so the empty list is passed, not left out."""
    fields = config_class.__dataclass_fields__
    return {"cuda_graph_modules" if "cuda_graph_modules" in fields else "cuda_graph_scope": []}


def transformer_config(model: ModelConfig, tensor_parallel: int, pipeline_parallel: int, params_dtype: torch.dtype):
    """The megatron-core TransformerConfig; TP/PP must equal what parallel_state was given
    (otherwise every pipeline stage numbers its layers from 0)."""
    from megatron.core.transformer import TransformerConfig

    check_parallel_fits(model, tensor_parallel, pipeline_parallel)
    return TransformerConfig(
        **_no_cuda_graph_modules(TransformerConfig),
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization=model.normalization,
        gated_linear_unit=model.swiglu,
        activation_func=torch.nn.functional.silu if model.swiglu else torch.nn.functional.gelu,
        add_bias_linear=False,
        qk_layernorm=model.qk_layernorm,
        add_qkv_bias=model.add_qkv_bias,
        layernorm_epsilon=model.layernorm_epsilon,
        init_method_std=model.init_method_std,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=not device.is_gpu_host(),
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
    )


def build_gpt_model(model: ModelConfig, vocab_size: int, *, params_dtype: torch.dtype = torch.float32):
    """The GPTModel stage of this rank (parallel_state must be initialised).

    megatron-core 0.19 deprecates GPTModel for HybridModel (its migration guide,
    docs/user-guide/hybrid-model-migration.md). Not followed yet: HybridModel splits each block into
    an attention and an MLP layer, so its checkpoints number `decoder.layers.*` differently and a
    GPTModel run refuses them: megatron-core 0.16 (still supported) has no HybridModel, and the merge,
    the HF key maps and components trained by Megatron-LM's GPT recipes all use GPTModel's keys.
    Migrate when 0.16 support ends, with the merge's and HF export's key maps (runtime/quiet.py hides
    the deprecation line meanwhile)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    config = transformer_config(model, tp, pp, params_dtype)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model),
        vocab_size=padded_vocab_size(vocab_size, model, tp),
        max_sequence_length=model.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not model.untie_embeddings_and_output_weights,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
    )
    return gpt.to(device.device())
