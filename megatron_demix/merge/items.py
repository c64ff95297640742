"""One plan item at a time: read the overlapping regions of the inputs, combine them, return the output chunk.

    for item in items:
        result = compute_item(item, regions(readers, item, method, inputs), names, weights, method, scale)
    held = held_regions(readers, item, method, inputs)         # many mixtures: read each region once
    results = [compute_item(item, replay(held, item), names, w, method, scale) for w in mixtures]

The regions of an item are loaded lazily, in a fixed order (`region_order`: the base first for
task arithmetic, then input 0, 1, ...), so a region is read only when the method is ready for
it and the previous one has been added and freed. (A read-ahead thread and a write-behind thread
were measured: on the 2-core CI machine they made a 1-rank merge slower, through GIL contention;
more ranks are the way to overlap I/O.)
"""
from __future__ import annotations

from typing import Callable

import torch

from megatron_demix.checkpoint.tensors import copy_overlap
from megatron_demix.checkpoint.torch_dist import ChunkReader
from megatron_demix.merge.io import MergeInputError, require_finite
from megatron_demix.merge.methods import Method
from megatron_demix.merge.plan import Item, Source


def read_region(reader: ChunkReader, sources: tuple[Source, ...], item: Item, as_fp32: bool) -> torch.Tensor:
    """The item's region of one input, assembled from the stored chunks that overlap it (a fresh tensor)."""
    region = None
    for source in sources:
        tensor = reader.tensor(source.index)
        if tuple(tensor.shape) != source.sizes:
            raise MergeInputError(
                f"{reader.name}: key {item.key} chunk at {source.offsets} holds shape {tuple(tensor.shape)},"
                f" but .metadata says {source.sizes}; the checkpoint is damaged"
            )
        if source.offsets == item.offsets and source.sizes == item.sizes:
            return tensor.float() if as_fp32 else tensor
        if region is None:
            region = torch.empty(item.sizes, dtype=torch.float32 if as_fp32 else tensor.dtype)
        copy_overlap(region, item.offsets, tensor, source.offsets)
    return region


def region_order(item: Item, inputs: int, method: Method) -> list[int]:
    """Which reader each region of `item` comes from, in the order `compute_item` consumes them."""
    if item.kind == "object":
        return [item.copy_from]
    if item.kind == "float" and method.needs_base:
        return [inputs, *range(inputs)]  # the base is the reader after the inputs
    return list(range(inputs))


def load(readers: list[ChunkReader], item: Item, reader: int):
    if item.kind == "object":
        return readers[reader].raw(item.index)
    return read_region(readers[reader], item.sources[reader], item, as_fp32=item.kind == "float")


def regions(readers: list[ChunkReader], item: Item, method: Method, inputs: int) -> Callable[[], object]:
    """`next_region` for `compute_item`: each call loads the item's next region."""
    lazy = (load(readers, item, r) for r in region_order(item, inputs, method))
    return lambda: next(lazy)


def held_regions(readers: list[ChunkReader], item: Item, method: Method, inputs: int) -> list:
    """Every region of `item` in `region_order`, read once and kept in the stored dtype, for `replay`."""
    return [readers[r].raw(item.index) if item.kind == "object" else read_region(readers[r], item.sources[r], item, as_fp32=False)
            for r in region_order(item, inputs, method)]


def replay(held: list, item: Item) -> Callable[[], object]:
    """`next_region` for `compute_item` from `held_regions`: each call hands out a fresh copy (fp32 for a
    merged item, as `read_region` gives it), since merge methods work in place; the held regions stay intact."""
    floating = item.kind == "float"
    tensors = iter(held)
    return lambda: _fresh(next(tensors), floating)


def _fresh(region, floating: bool):
    if not floating:
        return region  # bytes, or an exact tensor that compute_item only compares and returns
    return region.clone() if region.dtype == torch.float32 else region.float()


def compute_item(item: Item, next_region: Callable[[], object], names: list[str], weights: list[float], method: Method, scale: float):
    """The output of one item: merged fp32 cast to the output dtype, a checked copy, or an object's bytes.
    Floating inputs and the result must be finite (`require_finite`).

    `next_region()` returns the item's regions in `region_order`; `names[i]` names reader i in errors.
    """
    if item.kind == "object":
        return next_region()
    if item.kind == "exact":
        first = next_region()
        for name in names[1 : len(weights)]:
            if not torch.equal(next_region(), first):
                raise MergeInputError(
                    f"{name}: key {item.key} ({first.dtype}, region at {item.offsets}) differs from"
                    f" {names[0]}; non-floating tensors are copied, not averaged, so they must agree"
                )
        return first
    key = f"{item.key} (region at {item.offsets})"
    base = require_finite(next_region(), names[len(weights)], key) if method.needs_base else None
    merged = method.combine(lambda i: require_finite(next_region(), names[i], key), weights, scale=scale, base=base)
    merged = merged if merged.dtype == item.dtype else merged.to(item.dtype)
    return require_finite(merged, f"the merge into {item.dtype}", key)
