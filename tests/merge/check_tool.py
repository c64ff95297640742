"""Test helper: compare merged checkpoints with weighted sums recomputed from whole input tensors.

    python tests/merge/check_tool.py '{"name": "n2", "output": OUT, "inputs": [[A, 0.25], [B, 0.75]],
                                       "base": null, "scale": 1.0, "dtype": "same"}' ...

Reads every checkpoint whole with megatron-core's `dist_checkpointing.load_plain_tensors` (an
implementation independent of the merge's chunk reader), computes the reference in fp32 in the
documented order (acc = w0*T0; acc = acc + w1*T1 ...; task arithmetic on T_i - base, then
base + scale*acc), casts it to the output dtype and prints one JSON report per case:
{name: {"keys", "missing", "mismatches", "dtypes"}}.
"""
import functools
import json
import sys
import tempfile

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def plain(path: str) -> dict:
    from megatron.core import dist_checkpointing
    from megatron_demix.checkpoint.layout import resolve_checkpoint

    state = dist_checkpointing.load_plain_tensors(str(resolve_checkpoint(path).path))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}  # common.pt entries come back too


def reference(key: str, case: dict) -> torch.Tensor:
    first = plain(case["inputs"][0][0])[key]
    if not first.is_floating_point():
        return first
    base = plain(case["base"])[key].float() if case.get("base") else None
    acc = None
    for path, weight in case["inputs"]:
        term = plain(path)[key].float()
        if base is not None:
            term = term - base
        term = term * weight
        acc = term if acc is None else acc + term
    if base is not None:
        acc = base + case.get("scale", 1.0) * acc
    return acc.to(DTYPES.get(case.get("dtype", "same"), first.dtype))


def check(case: dict) -> dict:
    output = plain(case["output"])
    mismatches = []
    for key, got in output.items():
        expected = reference(key, case)
        if got.dtype != expected.dtype or got.shape != expected.shape or not torch.equal(got, expected):
            diff = (got.float() - expected.float()).abs().max().item() if got.shape == expected.shape else "shape"
            mismatches.append(f"{key}: {got.dtype} vs {expected.dtype}, max diff {diff}")
    missing = sorted(set(plain(case["inputs"][0][0])) - set(output))
    return {"keys": len(output), "missing": missing, "mismatches": mismatches, "dtypes": sorted({str(v.dtype) for v in output.values()})}


if __name__ == "__main__":
    # load_plain_tensors asks torch.distributed for the rank: a one-process group.
    with tempfile.NamedTemporaryFile() as store:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    cases = [json.loads(arg) for arg in sys.argv[1:]]
    print(json.dumps({case["name"]: check(case) for case in cases}))
