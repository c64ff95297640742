"""Parameter and FLOP counts of the GPT the `model:` section describes (for budgets and MFU).

Training FLOPs per token = 3 x forward (backward costs two forwards), forward counted as two FLOPs
per multiply-add of every matrix product:
  per layer  2*h*(q + 2*kv)          QKV projection (q = heads * head_dim, kv = groups * head_dim)
           + 2*2*(s/2)*q             scores and weighted values over a causal context (s/2 on average)
           + 2*q*h                   attention output projection
           + 2*h*f*(3 if SwiGLU else 2)   MLP
  once     2*h*V                     logits
Norms, rotary embeddings and the softmax are left out (well under 1% at these sizes).
"""
from __future__ import annotations

from megatron_demix.model.config import ModelConfig


def _dims(model: ModelConfig) -> tuple[int, int, int]:
    head_dim = model.kv_channels or model.hidden_size // model.num_attention_heads
    groups = model.num_query_groups or model.num_attention_heads
    return head_dim * model.num_attention_heads, head_dim * groups, 3 if model.swiglu else 2


def parameter_count(model: ModelConfig, vocab_size: int) -> int:
    """Weights of the model (embedding once more when the output layer is untied)."""
    h, f = model.hidden_size, model.ffn_hidden_size
    q, kv, mlp_mats = _dims(model)
    per_layer = h * (q + 2 * kv) + q * h + mlp_mats * h * f + 2 * h
    embeddings = vocab_size * h * (2 if model.untie_embeddings_and_output_weights else 1)
    return model.num_layers * per_layer + embeddings + h


def training_flops_per_token(model: ModelConfig, vocab_size: int) -> float:
    h, f, s = model.hidden_size, model.ffn_hidden_size, model.seq_length
    q, kv, mlp_mats = _dims(model)
    per_layer = 2 * h * (q + 2 * kv) + 2 * s * q + 2 * q * h + 2 * mlp_mats * h * f
    return 3.0 * (model.num_layers * per_layer + 2 * h * vocab_size)
