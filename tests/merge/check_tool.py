"""Test helper: compare a merged checkpoint with a weighted sum recomputed from whole input tensors.

    python tests/merge/check_tool.py --output OUT --input A:0.25 --input B:0.75 [--base BASE --scale S] [--dtype bf16]

Reads every checkpoint whole with megatron-core's `dist_checkpointing.load_plain_tensors` (an
implementation independent of the merge's chunk reader), computes the reference in fp32 in the
documented order (acc = w0*T0; acc = acc + w1*T1 ...; task arithmetic on T_i - base, then
base + scale*acc), casts to the output dtype and prints a JSON report: keys, mismatching keys, dtypes.
"""
import argparse
import json
import tempfile

import torch

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--input", action="append", required=True)
    parser.add_argument("--base")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--dtype", default="same")
    args = parser.parse_args()

    from megatron.core import dist_checkpointing
    from megatron_demix.checkpoint.layout import resolve_checkpoint

    # load_plain_tensors asks torch.distributed for the rank: a one-process group.
    with tempfile.NamedTemporaryFile() as store:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)

    def plain(path):
        return dist_checkpointing.load_plain_tensors(str(resolve_checkpoint(path).path))

    output = plain(args.output)
    inputs = [(plain(spec.rpartition(":")[0]), float(spec.rpartition(":")[2])) for spec in args.input]
    base = plain(args.base) if args.base else None
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    mismatches, kinds = [], set()
    for key, got in output.items():
        if not isinstance(got, torch.Tensor):  # common.pt entries (provenance) come back too
            continue
        first = inputs[0][0][key]
        if not first.is_floating_point():
            expected = first
        else:
            acc = None
            for state, weight in inputs:
                term = state[key].float()
                if base is not None:
                    term = term - base[key].float()
                term = term * weight
                acc = term if acc is None else acc + term
            if base is not None:
                acc = base[key].float() + args.scale * acc
            expected = acc.to(dtypes.get(args.dtype, first.dtype))
        kinds.add(str(got.dtype))
        if got.dtype != expected.dtype or not torch.equal(got, expected):
            diff = (got.float() - expected.float()).abs().max().item() if got.shape == expected.shape else "shape"
            mismatches.append(f"{key}: {got.dtype} vs {expected.dtype}, max diff {diff}")
    extra = sorted(k for k, v in inputs[0][0].items() if isinstance(v, torch.Tensor) and k not in output)
    print(json.dumps({"keys": len(output), "missing": extra, "mismatches": mismatches, "dtypes": sorted(kinds)}))
