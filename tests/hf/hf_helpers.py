"""Helpers of the Hugging Face tests: a random `transformers` model, the tokens fed to both models, logits on each
side, tensors on disk."""
from __future__ import annotations

import shutil

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


SIZES = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
"""A tiny GQA model with the tiny experiment's 512-token vocabulary."""


def make_hf_model(directory, tokenizer, model_type: str, tied: bool):
    """A random `transformers` model saved with safetensors, with the tiny experiment's tokenizer."""
    import transformers

    config = transformers.AutoConfig.for_model(model_type, tie_word_embeddings=tied, **SIZES)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # every tensor random, biases and norms included, so any layout slip shows
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    model.save_pretrained(str(directory))
    shutil.copyfile(tokenizer, directory / "tokenizer.json")
    return directory
