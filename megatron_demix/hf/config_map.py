"""How a megatron-core GPT and a Hugging Face Llama / Qwen2 / Qwen3 correspond: config fields and tensors.

    arch = architecture_for(model_config)              # Qwen3 with QK norm, Qwen2 with QKV bias, else Llama
    config = hf_config(model_config, geometry, ...)    # a transformers PretrainedConfig
    fields = model_fields(hf_config)                   # the `model:` section for an imported model
    for mapping in tensor_maps(geometry): ...          # megatron key <-> Hugging Face names, split / join

Both directions read `TENSOR_MAPS`, so export and import cannot disagree. The layouts that differ:
- fused QKV: megatron stores, per query group, that group's query heads then its key head then
  its value head ([groups, heads/groups + 2, head_dim] rows); Hugging Face has q/k/v_proj;
- SwiGLU FC1: megatron stores [gate; up] in one weight; Hugging Face has gate_proj and up_proj;
- the vocabulary: megatron pads it (make_vocab_size_divisible_by x TP); Hugging Face has the
  tokenizer's size (export cuts the padding rows, import pads with zeros).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from megatron_demix.runtime.errors import BAD_INPUT

# megatron-core's RoPE rotates the two halves of each head (rotary_interleaved off), as Hugging Face's
# `rotate_half` does; its norms are RMSNorm over the last axis, the QK norms over one head. So the
# architectures match tensor for tensor once the layouts above are converted.


class ConversionError(ValueError):
    """A model the other format cannot express, or an unusable input / output directory (exit 2)."""
    exit_status = BAD_INPUT


@dataclass(frozen=True)
class Architecture:
    model_type: str
    """Hugging Face `model_type` (config.json)."""
    class_name: str
    """The `*ForCausalLM` class `transformers` builds."""
    qk_layernorm: bool
    qkv_bias: bool


ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", qk_layernorm=False, qkv_bias=False),
    "qwen2": Architecture("qwen2", "Qwen2ForCausalLM", qk_layernorm=False, qkv_bias=True),
    "qwen3": Architecture("qwen3", "Qwen3ForCausalLM", qk_layernorm=True, qkv_bias=False),
}


@dataclass(frozen=True)
class Geometry:
    """The sizes the tensor layouts depend on."""

    layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    vocab: int
    """The tokenizer's vocabulary (Hugging Face rows)."""
    padded_vocab: int
    """Megatron's rows (padded)."""
    tied: bool
    arch: Architecture

    @classmethod
    def of(cls, model, vocab: int, padded_vocab: int) -> "Geometry":
        heads = model.num_attention_heads
        return cls(model.num_layers, model.hidden_size, heads, model.num_query_groups or heads,
                   model.kv_channels or model.hidden_size // heads, vocab, padded_vocab,
                   not model.untie_embeddings_and_output_weights, architecture_for(model))


# ---- the `model:` section <-> config.json --------------------------------------------------------

EXPORT_REFUSALS: dict[str, tuple[Callable, str]] = {
    "normalization": (lambda m: m.normalization != "RMSNorm",
                      "Llama/Qwen use RMSNorm without bias; a LayerNorm (with bias) has no equivalent there"),
    "position_embedding_type": (lambda m: m.position_embedding_type != "rope",
                                "Llama/Qwen use rotary positions; learned absolute position embeddings have no equivalent"),
    "swiglu": (lambda m: not m.swiglu, "Llama/Qwen MLPs are gated SiLU (SwiGLU); a GELU MLP has no equivalent"),
    "qk_layernorm": (lambda m: m.qk_layernorm and m.add_qkv_bias,
                     "QK norm with QKV bias is neither Qwen3 (no bias) nor Qwen2 (no QK norm)"),
}
"""`model.<key>`: (is the value inexpressible?, why). Checked before anything is written."""


def architecture_for(model) -> Architecture:
    if model.qk_layernorm:
        return ARCHITECTURES["qwen3"]
    return ARCHITECTURES["qwen2" if model.add_qkv_bias else "llama"]


def check_exportable(model, where: str) -> None:
    problems = [f"model.{key}={getattr(model, key)!r}: {why}" for key, (bad, why) in EXPORT_REFUSALS.items() if bad(model)]
    if problems:
        raise ConversionError(f"{where}: cannot export to Hugging Face Llama/Qwen2/Qwen3: " + "; ".join(problems))


def hf_config(model, geometry: Geometry, *, eos_token_id: int, dtype: torch.dtype):
    """The transformers config of the exported model."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        geometry.arch.model_type,
        architectures=[geometry.arch.class_name],
        vocab_size=geometry.vocab,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=geometry.heads,
        num_key_value_heads=geometry.groups,
        head_dim=geometry.head_dim,
        max_position_embeddings=model.max_position_embeddings,
        rms_norm_eps=model.layernorm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(model.rotary_base)},
        tie_word_embeddings=geometry.tied,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        dtype=str(dtype).removeprefix("torch."),
    )


IMPORT_REFUSALS: dict[str, tuple[Callable, str]] = {
    "hidden_act": (lambda c: c.hidden_act != "silu", "only SiLU (SwiGLU) MLPs are supported"),
    "mlp_bias": (lambda c: getattr(c, "mlp_bias", False), "megatron-demix models have no MLP biases"),
    "attention_bias": (lambda c: c.model_type == "llama" and getattr(c, "attention_bias", False),
                       "Llama with attention biases (a Qwen2 has QKV biases only) is not supported"),
    "rope_parameters": (lambda c: _rope(c).get("rope_type", "default") != "default",
                        "RoPE scaling (llama3, yarn, ...) is not supported; only plain RoPE"),
    "use_sliding_window": (lambda c: getattr(c, "use_sliding_window", False), "sliding-window attention is not supported"),
}


def _rope(config) -> dict:
    return getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}


def model_fields(config, where: str) -> dict:
    """The `model:` section (ModelConfig fields) describing the Hugging Face model `config`."""
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ConversionError(f"{where}: model_type {config.model_type!r} cannot be imported;"
                              f" supported: {', '.join(ARCHITECTURES)}")
    problems = [f"{key}={getattr(config, key, None)!r}: {why}" for key, (bad, why) in IMPORT_REFUSALS.items() if bad(config)]
    if problems:
        raise ConversionError(f"{where}: cannot import this {config.model_type} model: " + "; ".join(problems))
    heads = config.num_attention_heads
    return dict(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=getattr(config, "num_key_value_heads", None) or heads,
        kv_channels=getattr(config, "head_dim", None) or config.hidden_size // heads,
        max_position_embeddings=config.max_position_embeddings,
        seq_length=min(config.max_position_embeddings, 4096),
        normalization="RMSNorm",
        swiglu=True,
        position_embedding_type="rope",
        rotary_base=int(_rope(config)["rope_theta"]),
        layernorm_epsilon=float(config.rms_norm_eps),
        qk_layernorm=arch.qk_layernorm,
        add_qkv_bias=arch.qkv_bias,
        untie_embeddings_and_output_weights=not config.tie_word_embeddings,
    )


# ---- tensors ----------------------------------------------------------------------------------------

def _whole(tensor: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, ...]:
    return (tensor,)


def _one(tensors, g: Geometry) -> torch.Tensor:
    return tensors[0]


def _qkv_view(tensor: torch.Tensor, g: Geometry) -> torch.Tensor:
    return tensor.reshape(g.groups, g.heads // g.groups + 2, g.head_dim, *tensor.shape[1:])


def split_qkv(tensor: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, ...]:
    """Megatron's per-group [q heads, k, v] rows -> q_proj, k_proj, v_proj (weight or bias)."""
    per_group = g.heads // g.groups
    grouped = _qkv_view(tensor, g)
    rest = tuple(tensor.shape[1:])
    return (grouped[:, :per_group].reshape(g.heads * g.head_dim, *rest),
            grouped[:, per_group].reshape(g.groups * g.head_dim, *rest),
            grouped[:, per_group + 1].reshape(g.groups * g.head_dim, *rest))


def join_qkv(tensors, g: Geometry) -> torch.Tensor:
    q, k, v = tensors
    rest = tuple(q.shape[1:])
    per_group = g.heads // g.groups
    return torch.cat([q.reshape(g.groups, per_group, g.head_dim, *rest), k.reshape(g.groups, 1, g.head_dim, *rest),
                      v.reshape(g.groups, 1, g.head_dim, *rest)], dim=1).reshape(-1, *rest)


def split_halves(tensor: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, ...]:
    """SwiGLU FC1 [gate; up] -> gate_proj, up_proj (megatron applies the activation to the first half)."""
    return tuple(tensor.chunk(2, dim=0))


def join_halves(tensors, g: Geometry) -> torch.Tensor:
    return torch.cat(list(tensors), dim=0)


def cut_vocab(tensor: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, ...]:
    return (tensor[: g.vocab],)


def pad_vocab(tensors, g: Geometry) -> torch.Tensor:
    rows = tensors[0][: g.padded_vocab]
    if rows.shape[0] == g.padded_vocab:
        return rows
    return torch.cat([rows, rows.new_zeros(g.padded_vocab - rows.shape[0], *rows.shape[1:])])


@dataclass(frozen=True)
class TensorMap:
    """One megatron tensor and the Hugging Face tensors it becomes (`{layer}` in per-layer names)."""

    megatron: str
    """Checkpoint key; under `decoder.layers.` it is layer-stacked (axis 0 = layer)."""
    hf: tuple[str, ...]
    split: Callable = _whole
    """megatron tensor (one layer) -> the Hugging Face tensors, in `hf` order."""
    join: Callable = _one
    """The inverse of `split`."""
    present: Callable[[Geometry], bool] = lambda g: True

    @property
    def per_layer(self) -> bool:
        return self.megatron.startswith("decoder.layers.")


_ATTN, _MLP, _LAYER = "decoder.layers.self_attention.", "decoder.layers.mlp.", "model.layers.{layer}."
TENSOR_MAPS = (
    TensorMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), cut_vocab, pad_vocab),
    TensorMap(_ATTN + "linear_qkv.layer_norm_weight", (_LAYER + "input_layernorm.weight",)),
    TensorMap(_ATTN + "linear_qkv.weight", tuple(_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"), split_qkv, join_qkv),
    TensorMap(_ATTN + "linear_qkv.bias", tuple(_LAYER + f"self_attn.{p}_proj.bias" for p in "qkv"), split_qkv, join_qkv,
              present=lambda g: g.arch.qkv_bias),
    TensorMap(_ATTN + "q_layernorm.weight", (_LAYER + "self_attn.q_norm.weight",), present=lambda g: g.arch.qk_layernorm),
    TensorMap(_ATTN + "k_layernorm.weight", (_LAYER + "self_attn.k_norm.weight",), present=lambda g: g.arch.qk_layernorm),
    TensorMap(_ATTN + "linear_proj.weight", (_LAYER + "self_attn.o_proj.weight",)),
    TensorMap(_MLP + "linear_fc1.layer_norm_weight", (_LAYER + "post_attention_layernorm.weight",)),
    TensorMap(_MLP + "linear_fc1.weight", (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"),
              split_halves, join_halves),
    TensorMap(_MLP + "linear_fc2.weight", (_LAYER + "mlp.down_proj.weight",)),
    TensorMap("decoder.final_layernorm.weight", ("model.norm.weight",)),
    TensorMap("output_layer.weight", ("lm_head.weight",), cut_vocab, pad_vocab, present=lambda g: not g.tied),
)


def tensor_maps(geometry: Geometry) -> list[TensorMap]:
    return [m for m in TENSOR_MAPS if m.present(geometry)]
