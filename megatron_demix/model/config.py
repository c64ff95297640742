"""The `model:` section: a GPT architecture, from a preset plus explicit overrides.

Field names follow Megatron-LM's flags (`num_layers` is `--num-layers`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_demix.config.base import ConfigError, fail, require_at_least

PRESETS: dict[str, dict] = {
    # CPU tests and the demo: about 1M parameters besides the embedding.
    "tiny": dict(
        num_layers=4, hidden_size=64, ffn_hidden_size=192, num_attention_heads=4, num_query_groups=2,
        seq_length=128, max_position_embeddings=128,
    ),
    # Qwen3-1.7B-like (the paper's architecture): 28 layers, GQA 16/8, QK-norm, tied embeddings.
    "qwen3-1.7b": dict(
        num_layers=28, hidden_size=2048, ffn_hidden_size=6144, num_attention_heads=16, num_query_groups=8,
        kv_channels=128, seq_length=8192, max_position_embeddings=40960, qk_layernorm=True,
        rotary_base=1000000, make_vocab_size_divisible_by=128,
    ),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """A megatron-core GPTModel: RMSNorm, SwiGLU, RoPE and GQA by default."""

    preset: Literal["tiny", "qwen3-1.7b"] | None = None
    """Named architecture whose values fill every key not given explicitly."""
    from_hf: str | None = None
    """A local Hugging Face Llama / Qwen2 / Qwen3 directory to start from: its config.json sets every
    architecture key (one given here must agree; seq_length stays free), its tokenizer.json is the
    tokenizer, and the base stage imports its weights into checkpoints/base instead of training a base
    (megatron_demix/hf/from_hf.py)."""
    num_layers: int = 4
    """Transformer layers (--num-layers)."""
    hidden_size: int = 64
    """Model width (--hidden-size)."""
    ffn_hidden_size: int = 192
    """MLP inner width (--ffn-hidden-size); with SwiGLU each of its two input projections has this width."""
    num_attention_heads: int = 4
    """Query heads (--num-attention-heads)."""
    num_query_groups: int | None = None
    """Grouped-query attention groups (Megatron's --num-query-groups); unset means multi-head attention."""
    kv_channels: int | None = None
    """Per-head dimension; unset means hidden_size / num_attention_heads."""
    seq_length: int = 128
    """Tokens per training sequence (--seq-length); also the evaluation window unless eval.max_length is set."""
    max_position_embeddings: int = 128
    """Longest position the model supports (--max-position-embeddings)."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Layer norm kind (--normalization)."""
    swiglu: bool = True
    """Gated SiLU MLP (--swiglu); off: GELU."""
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    """Rotary or learned absolute positions (--position-embedding-type)."""
    rotary_base: int = 10000
    """RoPE base (--rotary-base)."""
    qk_layernorm: bool = False
    """Norm on queries and keys, as Qwen3 (--qk-layernorm)."""
    add_qkv_bias: bool = False
    """Biases on the query, key and value projections only, as Qwen2 (--add-qkv-bias)."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of every RMSNorm / LayerNorm (--norm-epsilon); Qwen3 uses 1e-6."""
    untie_embeddings_and_output_weights: bool = False
    """Separate output layer instead of the tied input embedding."""
    make_vocab_size_divisible_by: int = 128
    """The vocabulary is padded to a multiple of this x TP, as Megatron-LM does."""
    init_method_std: float = 0.02
    """Standard deviation of the weight initialisation (--init-method-std)."""
    transformer_impl: Literal["transformer_engine", "local"] = "transformer_engine"
    """Layer implementation on GPU hosts (--transformer-impl): Transformer Engine's fused layers, or
    megatron-core's local spec (plain torch; attention materialises seq x seq scores). Without TE
    installed a GPU host warns and runs `local`; `local` here chooses it quietly. CPU hosts always run `local`."""

    def __post_init__(self):
        require_at_least(self, 1, "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                         "kv_channels", "seq_length", "max_position_embeddings", "rotary_base", "make_vocab_size_divisible_by")
        if self.layernorm_epsilon <= 0:
            fail("layernorm_epsilon", f"{self.layernorm_epsilon} must be > 0")
        if self.init_method_std <= 0:
            fail("init_method_std", f"{self.init_method_std} must be > 0")
        if self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            fail("num_query_groups", f"{groups} does not divide num_attention_heads={self.num_attention_heads}")
        if self.seq_length > self.max_position_embeddings and self.position_embedding_type == "learned_absolute":
            fail("seq_length", f"{self.seq_length} exceeds max_position_embeddings={self.max_position_embeddings}")


def expand_preset(data: dict | None, where: str = "model") -> dict:
    """The `model:` mapping with its preset's values under the explicit ones."""
    data = dict(data or {})
    preset = data.get("preset")
    if preset is None:
        return data
    if preset not in PRESETS:
        fail(f"{where}.preset", f"{preset!r} is not one of {', '.join(repr(p) for p in PRESETS)}")
    return {**PRESETS[preset], **data}


def check_parallel_fits(model: ModelConfig, tensor_parallel: int, pipeline_parallel: int) -> None:
    """Raise a ConfigError naming the flag when TP/PP cannot split this model."""
    groups = model.num_query_groups or model.num_attention_heads
    if model.num_attention_heads % tensor_parallel or groups % tensor_parallel:
        raise ConfigError(
            f"--tensor-model-parallel-size {tensor_parallel} must divide model.num_attention_heads="
            f"{model.num_attention_heads} and model.num_query_groups={groups}"
        )
    if model.ffn_hidden_size % tensor_parallel:
        raise ConfigError(f"--tensor-model-parallel-size {tensor_parallel} must divide model.ffn_hidden_size={model.ffn_hidden_size}")
    if model.num_layers % pipeline_parallel:
        raise ConfigError(
            f"--pipeline-model-parallel-size {pipeline_parallel} must divide model.num_layers={model.num_layers}"
        )
