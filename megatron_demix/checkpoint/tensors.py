"""Where a region of a global tensor sits: overlaps between regions, and a model's regions in checkpoint terms.

    copy_overlap(dst, dst_offsets, src, src_offsets)   # the part of src inside dst, copied; returns its size
    model_regions(model)                               # checkpoint key -> this rank's tensors and their offsets

A torch_dist checkpoint stores each global tensor as chunks (offsets + sizes) cut by the TP/PP it
was saved with; a model at another TP/PP, a merge item or an exported layer cuts it differently.
Everything that moves values between two such cuts goes through `copy_overlap`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def overlap(dst_offsets, dst_sizes, src_offsets, src_sizes) -> list[tuple[int, int]] | None:
    """Per dimension, the [lo, hi) global range two regions share; None when they do not overlap."""
    ranges = []
    for do, ds, so, ss in zip(dst_offsets, dst_sizes, src_offsets, src_sizes):
        lo, hi = max(do, so), min(do + ds, so + ss)
        if hi <= lo:
            return None
        ranges.append((lo, hi))
    return ranges


def overlap_views(dst: torch.Tensor, dst_offsets, src: torch.Tensor, src_offsets) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(view of `dst`, view of `src`) over the part of the global tensor both regions hold; None when none."""
    ranges = overlap(dst_offsets, dst.shape, src_offsets, src.shape)
    if ranges is None:
        return None
    for dim, ((lo, hi), do, so) in enumerate(zip(ranges, dst_offsets, src_offsets)):
        dst, src = dst.narrow(dim, lo - do, hi - lo), src.narrow(dim, lo - so, hi - lo)
    return dst, src


def copy_overlap(dst: torch.Tensor, dst_offsets, src: torch.Tensor, src_offsets) -> int:
    """Copy the part of `src` (a region at `src_offsets` of a global tensor) that overlaps `dst`
    (the region at `dst_offsets`); returns the elements copied (0 when they do not overlap)."""
    views = overlap_views(dst, dst_offsets, src, src_offsets)
    if views is None:
        return 0
    views[0].copy_(views[1])
    return views[0].numel()


@dataclass
class ModelRegion:
    """A local model tensor and where it sits in the checkpoint's global tensor."""

    key: str
    offsets: tuple[int, ...]
    data: torch.Tensor
    """A view of the parameter with the prepended (layer-stack) axes as size-1 dimensions."""


def model_regions(model) -> dict[str, list[ModelRegion]]:
    """Checkpoint key -> this rank's regions of it, from the model's `sharded_state_dict()`."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    state = model.sharded_state_dict()
    apply_factories(state)
    found: dict[str, list[ModelRegion]] = {}
    for tensor in nested_values(state):
        if not isinstance(tensor, ShardedTensor) or tensor.data is None:
            continue
        view = tensor.data.view((1,) * tensor.prepend_axis_num + tuple(tensor.local_shape))
        found.setdefault(tensor.key, []).append(ModelRegion(tensor.key, tuple(tensor.global_offset), view))
    return found
