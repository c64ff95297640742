"""Test helper run under torchrun (gloo, CPU): save a tiny GPT checkpoint, or compute its logits.

    torchrun --nproc-per-node 4 tests/merge/model_tool.py save --tp 2 --pp 2 --seed 1 --out SAVE_ROOT
    torchrun --nproc-per-node 2 tests/merge/model_tool.py logits --tp 2 --ckpt DIR --out logits.pt
    torchrun --nproc-per-node 1 tests/merge/model_tool.py logits --tp 1 --ckpt A:0.25 --ckpt B:0.75 --out ref.pt

`save` writes a Megatron save root (iter_0000010 + tracker) with random weights from `--seed`.
`logits` loads one checkpoint, or several `DIR:WEIGHT` averaged in memory in fp32 (the merge's
order: acc = w0*T0, acc = acc + w1*T1, ...), into a PP=1 model and saves rank 0's logits.
"""
import argparse
import os

import torch

VOCAB = 1000
TOKENS = torch.arange(32).reshape(2, 16) * 29 % VOCAB


def build(tp: int, pp: int, seed: int):
    from megatron_demix.config.base import build as build_config
    from megatron_demix.model.config import ModelConfig, expand_preset
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel

    init_distributed()
    initialize_model_parallel(ParallelDims(tp, pp, torch.distributed.get_world_size()), seed)
    return build_gpt_model(build_config(ModelConfig, expand_preset({"preset": "tiny"}), "model"), VOCAB)


def save(args) -> None:
    from megatron.core import dist_checkpointing
    from megatron_demix.checkpoint.layout import iteration_dir, write_tracker

    model = build(args.tp, args.pp, args.seed)
    with torch.no_grad():  # give norms non-trivial values too, so every tensor differs between seeds
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = iteration_dir(args.out, 10)
    if torch.distributed.get_rank() == 0:
        os.makedirs(out, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(out))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        write_tracker(args.out, 10)


def logits(args) -> None:
    from megatron.core import dist_checkpointing

    model = build(args.tp, 1, 0)
    merged = None
    for spec in args.ckpt:
        path, _, weight = spec.rpartition(":") if ":" in spec else (spec, "", "1")
        loaded = dist_checkpointing.load(model.sharded_state_dict(), path)
        for key, value in loaded.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                continue
            term = value.float().mul_(float(weight))
            if merged is None or key not in merged:
                merged = merged or {}
                merged[key] = term
            else:
                merged[key].add_(term)
    model.load_state_dict({k: v for k, v in merged.items()}, strict=False)
    model.eval()
    with torch.no_grad():
        out = model(TOKENS, torch.arange(16).expand(2, 16), None)
    if torch.distributed.get_rank() == 0:
        torch.save(out, args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["save", "logits"])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    save(args) if args.command == "save" else logits(args)
