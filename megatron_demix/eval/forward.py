"""Forward passes of a megatron-core GPTModel for evaluation (one process, TP = PP = 1).

- `model_device(model)` / `on_model_device(x, model)`: the one place evaluation moves inputs to
  the model's device (GPU host: its CUDA device; CPU host: the CPU), used by the lm-eval model
  and eval/loss.py alike, so the CPU tests run the same code path as GPU hosts.
- `selected_logits(model, tokens, rows, cols, vocab_size)`: logits at chosen (row, position)
  pairs only. The output layer is applied to those hidden states alone (a pre-hook on
  `output_layer` picks them), so memory is [positions, vocab], never [batch, sequence, vocab];
  log-softmax then runs in fp32 over those rows.
- `target_log_probs(logits, targets, greedy)`: log p(target) per row and (when asked) whether it is the greedy
  choice, computed over the logits in place.

Attention is causal with no mask tensor (megatron-core builds the causal mask itself), so a
right-padded batch gives every real position exactly what it would get alone: padding only
follows the tokens that are read. RoPE takes positions from the sequence index, so left padding
would shift them: inputs are therefore always left-aligned.
"""
from __future__ import annotations

import contextlib

import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def on_model_device(value, model):
    """A tensor, or a dict of tensors, on the model's device."""
    target = model_device(model)
    if isinstance(value, dict):
        return {k: v.to(target, non_blocking=True) for k, v in value.items()}
    return value.to(target, non_blocking=True)


@contextlib.contextmanager
def only_positions(model, rows: torch.Tensor, cols: torch.Tensor):
    """While active, the output layer sees only the hidden states at (cols, rows) of its [s, b, h] input."""

    def pick(_module, args):
        hidden = args[0]
        return (hidden[cols, rows].unsqueeze(1), *args[1:])

    handle = model.output_layer.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()


def position_ids(batch: int, length: int, start: int = 0, device=None) -> torch.Tensor:
    return torch.arange(start, start + length, device=device).unsqueeze(0).expand(batch, length)


@torch.no_grad()
def selected_logits(model, tokens: torch.Tensor, rows, cols, vocab_size: int) -> torch.Tensor:
    """fp32 logits [len(rows), vocab_size] at positions (rows[i], cols[i]) of `tokens` [b, s]."""
    tokens = on_model_device(tokens, model)
    rows = torch.as_tensor(rows, device=tokens.device)
    cols = torch.as_tensor(cols, device=tokens.device)
    with only_positions(model, rows, cols):
        logits = model(tokens, position_ids(*tokens.shape, device=tokens.device), None, runtime_gather_output=True)
    return logits[0, :, :vocab_size].float()


@torch.no_grad()
def last_logits(model, tokens: torch.Tensor, vocab_size: int, inference_context=None, start: int = 0) -> torch.Tensor:
    """fp32 logits [b, vocab_size] at the last position of `tokens` [b, s].

    With a megatron-core `StaticInferenceContext`, `tokens` continue the cached sequence at
    `start` (its sequence offset); the caller advances the offset afterwards.
    """
    tokens = on_model_device(tokens, model)
    batch, length = tokens.shape
    positions = position_ids(batch, length, start, tokens.device)
    if inference_context is None:
        return selected_logits(model, tokens, torch.arange(batch), torch.full((batch,), length - 1), vocab_size)
    # The context makes the model materialise the last position's logits only.
    logits = model(tokens, positions, None, inference_context=inference_context, runtime_gather_output=True)
    return logits[:, -1, :vocab_size].float()


def target_log_probs(logits: torch.Tensor, targets, greedy: bool = True,
                     rows_per_chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(targets[i]) at row i, is targets[i] a most likely token, or None when not `greedy`) for fp32
    `logits` [n, vocab], on the CPU. `logits` is overwritten: its rows become log-probabilities.

    In chunks of rows that stay in the cache (1.7x faster on a CPU than one pass over [n, vocab], same
    bits), the log-softmax written over its input (no second [n, vocab] buffer to fill; same bits). Greedy
    is `logit[target] == max logit` rather than `argmax == target`: one cheap reduction instead of a second
    full pass (argmax costs as much as the log-softmax on a CPU); they differ only when two tokens tie for
    the maximum, and then the target does count as a greedy choice. Still a pass over every logit: a caller
    that drops it (rolling log-likelihoods, multiple-choice accuracy) asks for none."""
    target = torch.as_tensor(targets, device=logits.device)[:, None]
    picked, best = [], []
    for rows, wanted in zip(logits.split(rows_per_chunk), target.split(rows_per_chunk)):
        if greedy:
            best.append(rows.gather(1, wanted)[:, 0] >= rows.amax(dim=-1))
        picked.append(torch.log_softmax(rows, dim=-1, out=rows).gather(1, wanted)[:, 0])
    return torch.cat(picked).cpu(), torch.cat(best).cpu() if greedy else None
