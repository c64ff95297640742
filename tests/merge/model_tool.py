"""Test helper run under torchrun (gloo, CPU): save a tiny GPT checkpoint, or compute its logits.

    torchrun --nproc-per-node 4 tests/merge/model_tool.py save --tp 2 --pp 2 --seed 1 --out ROOT_A --seed 2 --out ROOT_B
    torchrun --nproc-per-node 2 tests/merge/model_tool.py logits --tp 2 --merged OUT_ITER --ckpt A:0.25 --ckpt B:0.75 --out l.pt

`save` writes a Megatron save root (iter_0000010 + tracker) with random weights from `--seed`.
`logits` builds a PP=1 model at `--tp`, loads the merged checkpoint, and, separately, the inputs
averaged in memory in fp32 (the merge's order: acc = w0*T0, acc = acc + w1*T1, ...); it saves
rank 0's logits of both as {"merged": ..., "averaged": ...}.
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
    """One save root per (--seed, --out) pair: the built weights plus N(0, 0.02) noise from the seed."""
    from megatron.core import dist_checkpointing
    from megatron_demix.checkpoint.layout import iteration_dir, write_tracker

    model = build(args.tp, args.pp, 0)
    initial = [p.detach().clone() for p in model.parameters()]
    for seed, root in zip(args.seed, args.out):
        torch.manual_seed(seed)  # the same on every rank: replicated tensors agree across TP ranks
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), initial):
                p.copy_(p0 + torch.randn_like(p) * 0.02)
        out = iteration_dir(root, 10)
        if torch.distributed.get_rank() == 0:
            os.makedirs(out, exist_ok=True)
        torch.distributed.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), str(out))
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            write_tracker(root, 10)


def _averaged_state(model, specs: list[str]) -> dict:
    """sum_i w_i * checkpoint_i of this rank's shards, in fp32, in the merge's order.

    dist_checkpointing.load fills the model's own parameters in place: copy before the next load.
    """
    from megatron.core import dist_checkpointing

    merged = {}
    for spec in specs:
        path, _, weight = spec.rpartition(":")
        for key, value in dist_checkpointing.load(model.sharded_state_dict(), path).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                term = value.to(torch.float32, copy=True).mul_(float(weight))
                merged[key] = merged[key].add_(term) if key in merged else term
    return merged


def logits(args) -> None:
    """Logits of the merged checkpoint and of the inputs averaged in memory, on the same TP model."""
    from megatron.core import dist_checkpointing

    model = build(args.tp, 1, 0)
    model.eval()
    results = {}
    for name, state in [
        ("merged", lambda: dist_checkpointing.load(model.sharded_state_dict(), args.merged)),
        ("averaged", lambda: _averaged_state(model, args.ckpt)),
    ]:
        model.load_state_dict({k: v for k, v in state().items() if isinstance(v, torch.Tensor)}, strict=False)
        with torch.no_grad():
            results[name] = model(TOKENS, torch.arange(16).expand(2, 16), None)
    if torch.distributed.get_rank() == 0:
        torch.save(results, args.out[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["save", "logits"])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--seed", type=int, action="append", default=[])
    parser.add_argument("--merged", help="merged checkpoint (iter dir)")
    parser.add_argument("--ckpt", action="append", default=[], help="DIR:WEIGHT of an input (iter dir)")
    parser.add_argument("--out", action="append", required=True, help="save root (save; repeat with --seed) or logits file")
    args = parser.parse_args()
    save(args) if args.command == "save" else logits(args)
