"""Build a megatron-core GPTModel from the `model:` config.

The same builder serves training, checkpoint loading (any TP/PP) and evaluation. Which layers
run where (runtime/device.py decides, this module applies):
- GPU host with Transformer Engine importable: the TE layer spec (fused kernels, fp8-ready) and
  Megatron-LM's fusions;
- GPU host without TE: the local spec, after a loud warning (unless `model.transformer_impl: local`);
- CPU host: megatron-core's local spec (plain torch modules), no fusions.
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


def layer_spec(model: ModelConfig, *, gpu: bool | None = None):
    """TE's spec where runtime/device.py `use_transformer_engine` says so (GPU hosts), else the local one."""
    from megatron.core.models.gpt import gpt_layer_specs

    if device.use_transformer_engine(model.transformer_impl, gpu=gpu):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=model.qk_layernorm, normalization=model.normalization)


def _no_cuda_graph_modules(config_class) -> dict:
    """No CUDA graphs, in the spelling of the installed megatron-core: the field is `cuda_graph_modules`
    from 0.19 (`cuda_graph_scope` is deprecated there), `cuda_graph_scope` before. Both releases warn
    that their own default ("full") is deprecated, so the empty list is passed, not left out."""
    fields = config_class.__dataclass_fields__
    return {"cuda_graph_modules" if "cuda_graph_modules" in fields else "cuda_graph_scope": []}


def transformer_config(model: ModelConfig, tensor_parallel: int, pipeline_parallel: int, params_dtype: torch.dtype,
                       throughput: device.Throughput | None = None, *, gpu: bool | None = None):
    """The megatron-core TransformerConfig; TP/PP must equal what parallel_state was given
    (otherwise every pipeline stage numbers its layers from 0). `throughput` (default: this host's,
    runtime/device.py) switches megatron-core's fusions: Megatron-LM's set on GPU hosts, none on CPU."""
    from megatron.core.transformer import TransformerConfig

    check_parallel_fits(model, tensor_parallel, pipeline_parallel)
    fused = throughput or device.throughput_settings(gpu=gpu)
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
        use_cpu_initialization=not device.is_gpu_host() if gpu is None else not gpu,
        # Only SwiGLU has a fused bias-activation kernel without biases; the GELU one needs add_bias_linear.
        bias_activation_fusion=fused.bias_swiglu_fusion and model.swiglu,
        bias_dropout_fusion=fused.bias_dropout_fusion,
        masked_softmax_fusion=fused.masked_softmax_fusion,
        persist_layer_norm=fused.persist_layer_norm,
        gradient_accumulation_fusion=fused.gradient_accumulation_fusion,
        apply_rope_fusion=fused.rope_fusion and model.position_embedding_type == "rope",
        # Free each pipeline stage's output once sent (only its .grad_fn is needed for backward), as Megatron-LM
        # always does (no flag there either); a no-op without pipeline parallelism.
        deallocate_pipeline_outputs=fused.deallocate_pipeline_outputs,
    )


def build_gpt_model(model: ModelConfig, vocab_size: int, *, params_dtype: torch.dtype = torch.float32,
                    throughput: device.Throughput | None = None):
    """The GPTModel stage of this rank (parallel_state must be initialised); `throughput` as in `transformer_config`.

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
    config = transformer_config(model, tp, pp, params_dtype, throughput)
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
