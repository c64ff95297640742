"""Helpers of the Hugging Face tests: the tokens fed to both models, logits on each side, tensors on disk."""
from __future__ import annotations

import torch

TOKENS = torch.arange(48).reshape(2, 24) * 37 % 512
"""Token ids every logit comparison feeds both models (the tiny tokenizer has 512 tokens)."""


def megatron_logits(model, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """fp32 logits [b, s, 512] of a megatron-core GPTModel (TP=PP=1, padding rows cut)."""
    from megatron_demix.eval.forward import position_ids

    with torch.no_grad():
        return model(tokens, position_ids(*tokens.shape), attention_mask=None)[..., :512].float()


def hf_logits(directory, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """fp32 logits of `transformers.AutoModelForCausalLM.from_pretrained(directory)`."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def safetensors_of(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors
