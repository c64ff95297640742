"""Held-out loss per domain of one or more checkpoints (base, components, merged proxies).

    domain_losses(experiment, [Path("runs/demo/checkpoints/base")], samples=64)   # commands/eval_loss.py: the command

One process, TP = PP = 1: any checkpoint loads by resharding, whatever layout it was saved with.
Every checkpoint sees the same validation samples of every dataset (the split the trainer holds
out), so the numbers compare across models: the cheapest signal that a proxy moves with its
mixture. Benchmarks through lm-eval are the search's real objective.
"""
from __future__ import annotations

from pathlib import Path

import torch


def domain_losses(experiment, checkpoints: list[Path], samples: int = 64, micro_batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{checkpoint: {domain: mean token loss}} over `samples` validation sequences per domain."""
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.eval.forward import on_model_device
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel
    from megatron_demix.checkpoint.weights import load_weights
    from megatron_demix.config.base import replace
    from megatron_demix.data.datasets import BATCH_KEYS, Blend, TrainingData

    init_distributed()
    initialize_model_parallel(ParallelDims(1, 1, 1), seed=experiment.training.seed)
    tokenizer = load_tokenizer(experiment.paths.tokenizer)
    domains = [d.name for d in experiment.datasets]
    # The trainer's data code, so these are exactly the samples it holds out for validation.
    training = replace(experiment.training, eval_iters=-(-samples // experiment.training.global_batch_size))
    blend = Blend("eval", tuple(domains), tuple(1 / len(domains) for _ in domains))
    valid = TrainingData.build(experiment, blend, tokenizer, train_iters=1, training=training,
                               cache=experiment.paths.data / "index-cache" / "eval").valid
    model = build_gpt_model(experiment.model, tokenizer.vocab_size)
    model.eval()
    results = {}
    for checkpoint in checkpoints:
        load_weights(checkpoint, model)
        losses = {}
        for domain, dataset in valid.items():
            total, count = 0.0, 0.0
            for start in range(0, min(samples, len(dataset)), micro_batch_size):
                batch = [dataset[i] for i in range(start, min(start + micro_batch_size, samples, len(dataset)))]
                batch = on_model_device({k: torch.stack([s[k] for s in batch]) for k in BATCH_KEYS}, model)
                with torch.no_grad():
                    loss = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
                mask = batch["loss_mask"].float()
                total += float((loss.float() * mask).sum())
                count += float(mask.sum())
            losses[domain] = total / count
        results[str(checkpoint)] = losses
    return results
