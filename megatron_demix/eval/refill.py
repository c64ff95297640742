"""The many-mixtures loop's refill: the cached components laid out flat once, then one merge per mixture.

    refill = FlatRefill(model_regions(model), components.cached())   # once; takes the cached regions over
    refill([0.2, 0.5, 0.3])                                          # the model now holds that proxy

Why: `merge.sources.fill_model` walks the plan item by item, and per item copies each component's
region, runs the merge method, casts and copies into the model: a dozen small torch calls per
tensor, which on a small model cost more than their arithmetic. Merge methods are element-wise
(merge/methods.py), so the method run once over the concatenation of every item's regions gives
the bits it gives item by item: each input's flat vector (stored dtype, as the cache held it) is
handed to the method as a fresh fp32 copy, the result is cast into one preallocated buffer in the
items' output dtype (merge.dtype), and one `_foreach_copy_` moves every item into the model's
parameters (in the model's dtype). Inputs are checked finite once, here; each result on every refill.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_demix.checkpoint.tensors import overlap_views
from megatron_demix.merge.io import MergeInputError, require_finite
from megatron_demix.merge.items import compute_item, region_order
from megatron_demix.merge.plan import Item


@dataclass
class _Group:
    """Float items of one output dtype and one set of stored dtypes, laid out end to end."""

    items: list[Item]
    inputs: list[torch.Tensor]
    """Per region position (`region_order`: the base first for task arithmetic), the flat regions, stored dtype."""
    out: torch.Tensor
    """The merged, cast result: what `compute_item` returns, for every item, end to end."""
    views: list[torch.Tensor]
    """Each item's part of `out`, in its shape."""


class FlatRefill:
    """Refills the model whose `regions_by_key` (`model_regions`) it was built for, from a `CachedSource`, which it
    empties: the regions move into the flat layout one item at a time, so memory stays that of the cache."""

    def __init__(self, regions_by_key: dict, cached):
        self.method, self.scale, self.names = cached.method, cached.scale, cached.plan.names
        self.count = cached.inputs
        wanted = [item for item in cached.plan.items if item.kind != "object" and item.key in regions_by_key]
        stored = {item.index: [t.dtype for t in cached.store[item.index]] for item in wanted}
        by_kind: dict[tuple, list[Item]] = {}
        for item in wanted:
            by_kind.setdefault((item.kind, item.dtype, *stored[item.index]), []).append(item)
        self.groups, exact, written = [], [], {key: 0 for key in regions_by_key}
        for (kind, *_), items in by_kind.items():
            if kind == "exact":  # copied, not merged: the same for every mixture
                exact += [(item, compute_item(item, cached.regions(item), self.names, [1.0] * self.count, self.method,
                                              self.scale)) for item in items]
                for item in items:
                    del cached.store[item.index]
            else:
                self.groups.append(self._lay_out(items, cached))
        pairs = [(item, view) for group in self.groups for item, view in zip(group.items, group.views)] + exact
        self.targets, self.sources = [], []
        for item, merged in pairs:
            for region in regions_by_key[item.key]:
                views = overlap_views(region.data, region.offsets, merged, item.offsets)
                if views is not None:
                    self.targets.append(views[0])
                    self.sources.append(views[1])
                    written[item.key] += views[0].numel()
        missing = [key for key, n in written.items() if n == 0]
        if missing:
            raise MergeInputError(f"{self.names[0]}: holds no values for model tensor(s) {', '.join(sorted(missing)[:5])};"
                                  " is it this architecture?")
        cached.close()

    def _lay_out(self, items: list[Item], cached) -> _Group:
        sizes = [math.prod(item.sizes) for item in items]
        first = cached.store[items[0].index]
        inputs = [torch.empty(sum(sizes), dtype=t.dtype) for t in first]
        order = region_order(items[0], self.count, self.method)
        start = 0
        for item, size in zip(items, sizes):
            key = f"{item.key} (region at {item.offsets})"
            for flat, region, reader in zip(inputs, cached.store.pop(item.index), order):
                flat[start:start + size].copy_(require_finite(region, self.names[reader], key).reshape(-1))
            start += size
        out = torch.empty(start, dtype=items[0].dtype)
        views, start = [], 0
        for item, size in zip(items, sizes):
            views.append(out[start:start + size].view(item.sizes))
            start += size
        return _Group(items, inputs, out, views)

    @torch.no_grad()
    def __call__(self, weights: list[float]) -> None:
        """The model's parameters become the merge with `weights` (checked and normalised by the caller)."""
        for group in self.groups:
            base = group.inputs[0] if self.method.needs_base else None
            inputs = group.inputs[1:] if self.method.needs_base else group.inputs
            merged = self.method.combine(lambda i: _fresh_fp32(inputs[i]), weights, scale=self.scale, base=base)
            group.out.copy_(merged)  # the cast to the output dtype, as compute_item's `.to(item.dtype)`
            if not math.isfinite(group.out.sum()):  # name the first tensor that overflowed, as compute_item does
                for item, view in zip(group.items, group.views):
                    require_finite(view, f"the merge into {item.dtype}", f"{item.key} (region at {item.offsets})")
        torch._foreach_copy_(self.targets, self.sources)


def _fresh_fp32(flat: torch.Tensor) -> torch.Tensor:
    """A copy the method may change in place, in fp32 (what `read_region(as_fp32=True)` gives)."""
    return flat.clone() if flat.dtype == torch.float32 else flat.float()
