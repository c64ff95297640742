"""Greedy generation for a batch of prompts, with megatron-core's KV cache or without it.

    tokens = greedy_generate(model, prompts, max_new_tokens=128, vocab_size=V, done=stop_fn)

Prompts of different lengths share one left-aligned buffer (RoPE positions stay those of an
unbatched run). Step t feeds position t of every row: a row whose prompt is longer than t feeds
its own prompt token, the others the token just generated. With the cache
(`StaticInferenceContext`) the shortest prompt is prefilled in one pass, then each step runs one
position per row against the cached keys and values; without it each step re-runs the whole
prefix (the reference the cache must match: greedy outputs are equal, tested).
"""
from __future__ import annotations

from typing import Callable

import torch

from megatron_demix.eval.forward import last_logits, model_device


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, vocab_size: int,
                    done: Callable[[int, list[int]], bool] = lambda row, generated: False,
                    use_cache: bool = True) -> list[list[int]]:
    """Generated token ids per prompt: at most `max_new_tokens`, stopping a row once `done(row, ids)`."""
    from megatron.core.inference.contexts import StaticInferenceContext

    batch = len(prompts)
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise ValueError("greedy_generate: every prompt needs at least one token")
    total = max(lengths) + max_new_tokens
    buffer = torch.zeros((batch, total), dtype=torch.long, device=model_device(model))
    for row, prompt in enumerate(prompts):
        buffer[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    in_prompt = torch.tensor(lengths, device=buffer.device)
    generated: list[list[int]] = [[] for _ in prompts]
    finished = [False] * batch
    context = StaticInferenceContext(batch, total) if use_cache else None
    start = min(lengths)
    step_input = buffer[:, :start]
    for position in range(start, total):
        if context is None:
            logits = last_logits(model, buffer[:, :position], vocab_size)
        else:
            logits = last_logits(model, step_input, vocab_size, context, start=context.sequence_len_offset)
            context.sequence_len_offset += step_input.shape[1]
        choice = logits.argmax(dim=-1)
        prompted = position < in_prompt
        buffer[:, position] = torch.where(prompted, buffer[:, position], choice)
        for row in range(batch):
            if not prompted[row] and not finished[row]:
                generated[row].append(int(choice[row]))
                finished[row] = len(generated[row]) >= max_new_tokens or done(row, generated[row])
        if all(finished):
            break
        step_input = buffer[:, position : position + 1]
    return generated
