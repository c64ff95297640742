"""Legacy `torch` format (`mp_rank_XX[_YYY]/model_optim_rng.pt`): merged rank file by rank file.

Each model-parallel rank file of the output is the weighted merge of the same rank file of every
input, so all inputs must have been saved with the same TP/PP (the same set of rank files; the
layer keys are stage-local). Rank files are balanced across MPI ranks by size. Inputs are
memory-mapped (`torch.load(mmap=True)`), so a rank holds the merged model part of one rank file
(output dtype) plus one fp32 tensor at a time. Optimizer state and scheduler are dropped;
`args`, `iteration`, `rng_state`, ... come from the first input, plus `demix_merge` provenance.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_demix.checkpoint.torch_dist import load_torch_file
from megatron_demix.merge.io import MergeError, MergeInputError, output_failure, require_finite
from megatron_demix.merge.methods import Method
from megatron_demix.merge.plan import balance
from megatron_demix.runtime.dtypes import torch_dtype

RANK_FILE = "model_optim_rng.pt"
DROPPED = ("optimizer", "opt_param_scheduler")


@dataclass
class LegacyPlan:
    dirs: list[Path]
    names: list[str]
    files: list[str]
    """Rank files relative to a checkpoint directory, e.g. mp_rank_01_000/model_optim_rng.pt."""
    sizes: list[int]
    assignment: list[list[int]] = field(default_factory=list)
    copy_from: int = 0
    """The input whose non-tensor state (`_extra_state`, RNG, args) is copied (--extra-state-source)."""

    @property
    def read_bytes(self) -> int:
        return sum(self.sizes) * len(self.dirs)

    @property
    def peak_bytes(self) -> int:
        return max(self.sizes) * 2  # merged part (<= input size in fp32) + one fp32 tensor, generously

    def describe(self) -> str:
        return (
            f"{len(self.files)} legacy rank files, {self.read_bytes / 1e6:.1f} MB to read;"
            f" memory bound per rank: ~{self.peak_bytes / 1e6:.1f} MB (the largest rank file's merged model"
            " + one fp32 tensor; inputs are memory-mapped) + interpreter and torch"
        )


def build_legacy_plan(dirs: list[Path], names: list[str], ranks: int, copy_from: int = 0) -> LegacyPlan:
    listings = [sorted(str(p.relative_to(d)) for p in Path(d).glob(f"mp_rank_*/{RANK_FILE}")) for d in dirs]
    for listing, name in zip(listings[1:], names[1:]):
        if listing != listings[0]:
            raise MergeInputError(
                f"{name}: has rank files {', '.join(listing)}, {names[0]} has {', '.join(listings[0])};"
                " legacy inputs must be saved with the same TP/PP (or convert them to torch_dist)"
            )
    sizes = []
    for relative in listings[0]:
        per_input = [os.stat(Path(d) / relative).st_size for d in dirs]
        for size, name in zip(per_input, names):
            if size == 0:
                raise MergeInputError(f"{name}: {relative} is empty; the checkpoint is incomplete")
        sizes.append(per_input[0])
    return LegacyPlan(list(map(Path, dirs)), list(names), listings[0], sizes, balance(sizes, ranks), copy_from)


def _load(path: Path, name: str) -> dict:
    state = load_torch_file(path, f"{name}: {path}", map_location="cpu", mmap=True)  # args, RNG state: allow-listed
    if not isinstance(state, dict) or not any(k.startswith("model") for k in state):
        raise MergeInputError(f"{name}: {path} has no 'model' state dict; not a Megatron-LM rank file")
    return state


def _merge_model(key_prefix, models: list[dict], names, weights, method: Method, scale, dtype, copy_from: int) -> dict:
    merged = {}
    for key, first in models[0].items():
        where = f"{key_prefix}.{key}"
        values = []
        for model, name in zip(models, names):
            if key not in model:
                raise MergeInputError(f"{name}: lacks key {where}, which {names[0]} has; all inputs must be the same architecture")
            values.append(model[key])
        if not isinstance(first, torch.Tensor):
            merged[key] = values[copy_from]  # _extra_state and other objects: copied, never averaged
            continue
        for value, name in zip(values[1:], names[1:]):
            if not isinstance(value, torch.Tensor) or value.shape != first.shape or value.dtype != first.dtype:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise MergeInputError(f"{name}: key {where} is {got}, {names[0]} has {tuple(first.shape)} {first.dtype}")
        if not first.is_floating_point():
            for value, name in zip(values[1:], names[1:]):
                if not torch.equal(value, first):
                    raise MergeInputError(f"{name}: key {where} ({first.dtype}) differs from {names[0]}; non-floating tensors must agree")
            merged[key] = first.clone()
            continue
        for value, name in zip(values, names):
            require_finite(value, name, where)
        base = values[-1].float() if method.needs_base else None
        out = method.combine(lambda i: values[i].to(torch.float32, copy=True), weights, scale=scale, base=base)
        merged[key] = require_finite(out.to(first.dtype if dtype == "same" else torch_dtype(dtype)), "the merge", where)
    extra = [k for m, n in zip(models[1:], names[1:]) for k in m if k not in models[0]]
    if extra:
        raise MergeInputError(f"{names[0]}: lacks key {key_prefix}.{extra[0]} that another input has; all inputs must be the same architecture")
    return merged


def merge_rank_file(plan: LegacyPlan, relative: str, out_dir: Path, weights, method: Method, scale, dtype, provenance) -> dict:
    """Merge one rank file of every input into out_dir/relative; returns the written state."""
    states = [_load(Path(d) / relative, name) for d, name in zip(plan.dirs, plan.names)]
    output = {k: v for k, v in states[plan.copy_from].items() if k not in DROPPED}
    for key in [k for k in states[0] if k.startswith("model")]:  # `model`, or model0.. with virtual pipelining
        output[key] = _merge_model(f"{relative}:{key}", [s[key] for s in states], plan.names, weights, method, scale, dtype,
                                   plan.copy_from)
    output["iteration"] = provenance["iteration"]
    output["demix_merge"] = provenance
    target = Path(out_dir) / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(output, target)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch.save's own file errors
        raise output_failure(target, error) from None
    return output


def verify_rank_file(path: Path, expected: dict) -> None:
    written = load_torch_file(path, str(path), map_location="cpu", mmap=True)
    keys = [k for k in expected if k.startswith("model")]
    for key in keys:
        for name, tensor in random.Random(0).sample(sorted(expected[key].items()), min(8, len(expected[key]))):
            if isinstance(tensor, torch.Tensor) and not torch.equal(written[key][name], tensor):
                raise MergeError(f"--verify: {path}: key {key}.{name} differs from the merged value; storage is unreliable")
