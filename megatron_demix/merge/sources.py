"""Component checkpoints planned for a merge, read without writing one: regions, whole tensors, a model filled in memory.

    source = ComponentSource.open(["ckpt/code", "ckpt/math"], dtype="bf16")   # plans once, reads lazily
    fill_model(model, source, weights=[0.3, 0.7])                             # proxy weights, chunk by chunk
    source.read("decoder.final_layernorm.weight", [0.3, 0.7])                 # one merged global tensor
    cached = source.cached()                                                  # every region in memory, for many mixtures
    read_tensor(ckpt, "decoder.final_layernorm.weight")                       # one checkpoint's tensor, any saved TP/PP

Open a mixture's proxy with `merge.proxy` (it picks the method, scale and dtype from the `merge:`
section). Everything here goes through the merge's own steps: `plan.build_plan` checks the inputs
against each other (keys, shapes, dtypes, data files) and lists the stored chunks, `items.compute_item`
reads and combines one chunk. So a proxy filled in memory holds exactly the bytes that
`tools/merge/run.py` writes with the same settings (fp32 accumulation, then the output dtype), and a
model loaded from that merged checkpoint holds the same values. Memory: one chunk at a time besides
the model (`ComponentSource`), or every component region (`CachedSource.bytes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from megatron_demix.checkpoint.layout import CheckpointError, resolve_checkpoint
from megatron_demix.checkpoint.tensors import copy_overlap, model_regions, overlap
from megatron_demix.checkpoint.torch_dist import ChunkReader, read_metadata
from megatron_demix.merge.io import MergeInputError
from megatron_demix.merge.items import compute_item, held_regions, region_order, regions, replay
from megatron_demix.merge.methods import Method, get_method
from megatron_demix.merge.plan import Item, Plan, build_plan


def torch_dist_dir(path: str | Path, name: str | None = None) -> Path:
    """The torch_dist directory of a save root / iter dir / bare checkpoint, or a MergeInputError naming it."""
    try:
        found = resolve_checkpoint(path)
    except CheckpointError as error:
        raise MergeInputError(f"{name + ': ' if name else ''}{error}") from None
    if found.format != "torch_dist":
        raise MergeInputError(f"{name or path}: a {found.format} checkpoint; only torch_dist checkpoints load for evaluation")
    return found.path


class _Merged:
    """What both sources offer on top of `regions(item)`: merged regions of global tensors."""

    plan: Plan
    method: Method
    scale: float

    @cached_property
    def items_by_key(self) -> dict[str, list[Item]]:
        """Tensor key -> its plan items (the output chunks), in plan order."""
        found: dict[str, list[Item]] = {}
        for item in self.plan.items:
            if item.kind != "object":
                found.setdefault(item.key, []).append(item)
        return found

    def shape(self, key: str) -> tuple[int, ...] | None:
        """The global shape of tensor `key`, None when the inputs have no such tensor."""
        return tuple(self.plan.state_dict_metadata[key].size) if key in self.items_by_key else None

    def read(self, key: str, weights: list[float], offsets: tuple[int, ...] | None = None,
             sizes: tuple[int, ...] | None = None) -> torch.Tensor:
        """The merge with `weights` of the global tensor `key`, or of its region at `offsets`/`sizes`, in
        the output dtype: only the chunks overlapping the region are read and combined."""
        if key not in self.items_by_key:
            raise MergeInputError(f"{self.plan.names[0]}: no tensor {key!r}")
        shape = self.shape(key)
        offsets, sizes = offsets or (0,) * len(shape), sizes or shape
        out = torch.empty(sizes, dtype=self.items_by_key[key][0].dtype)
        copied = 0
        for item in self.items_by_key[key]:
            if overlap(offsets, sizes, item.offsets, item.sizes) is not None:
                merged = compute_item(item, self.regions(item), self.plan.names, weights, self.method, self.scale)
                copied += copy_overlap(out, offsets, merged, item.offsets)
        if copied != out.numel():
            raise MergeInputError(f"{self.plan.names[0]}: {key} has stored chunks covering {copied} of {out.numel()}"
                                  " values; the checkpoint is damaged")
        return out


@dataclass
class ComponentSource(_Merged):
    """Component checkpoints planned for merging: regions are read from disk when asked for."""

    plan: Plan
    method: Method
    scale: float = 1.0
    inputs: int = 0
    """Component count (the base, for task arithmetic, is the reader after them)."""
    _readers: list[ChunkReader] = field(default_factory=list)

    @classmethod
    def open(cls, components, names=None, *, method: str = "linear", base=None, scale: float = 1.0,
             dtype: str = "same") -> "ComponentSource":
        """`dtype` (`same` or a runtime/dtypes.py name): what merged floating-point tensors are cast to (merge.dtype)."""
        names = list(names or [f"component {i + 1} ({p})" for i, p in enumerate(components)])
        method_ = get_method(method)
        if method_.needs_base and base is None:
            raise MergeInputError(f"merge method {method} needs the base checkpoint")
        paths = list(components) + ([base] if method_.needs_base else [])
        names += [f"base ({base})"] if method_.needs_base else []
        dirs = [torch_dist_dir(p, n) for p, n in zip(paths, names)]
        plan = build_plan(dirs, names, dtype=dtype, has_base=method_.needs_base)
        source = cls(plan, method_, scale, len(components))
        source._readers = [ChunkReader(d, read_metadata(d).storage_data, n) for d, n in zip(dirs, names)]
        return source

    def regions(self, item: Item) -> Callable[[], object]:
        return regions(self._readers, item, self.method, self.inputs)

    def cached(self) -> "CachedSource":
        """Every region of every component in memory (stored dtype): many mixtures without re-reading."""
        store = {}
        for item in self.plan.items:
            if item.kind != "object":
                store[item.index] = held_regions(self._readers, item, self.method, self.inputs)
        return CachedSource(self.plan, self.method, self.scale, self.inputs, store)

    @property
    def bytes_to_cache(self) -> int:
        """Memory `cached()` takes: every stored region of every input, in its stored dtype."""
        return sum(
            math.prod(item.sizes) * item.dtype.itemsize * len(region_order(item, self.inputs, self.method))
            for item in self.plan.items if item.kind != "object"
        )

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


@dataclass
class CachedSource(_Merged):
    """Component regions held in memory; `regions` hands out fresh fp32 copies (methods work in place)."""

    plan: Plan
    method: Method
    scale: float
    inputs: int
    store: dict
    """Item index (`MetadataIndex`) -> its regions in `region_order`, in the stored dtype."""

    def regions(self, item: Item) -> Callable[[], object]:
        return replay(self.store[item.index], item)

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for tensors in self.store.values() for t in tensors)

    def close(self) -> None:
        self.store.clear()


def read_tensor(path: str | Path, key: str, offsets: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """The global tensor `key` of one checkpoint (or its region at `offsets`/`sizes`), assembled from the stored chunks."""
    source = ComponentSource.open([path], [str(path)])
    try:
        return source.read(key, [1.0], offsets, sizes)
    finally:
        source.close()


@torch.no_grad()
def fill_model(model, source: ComponentSource | CachedSource, weights: list[float], regions_by_key=None) -> int:
    """Set every model tensor to the merge of the components with `weights` (normalised by the caller).

    Per stored chunk: combine in fp32 with the merge method, cast to the output dtype (what a merge
    to disk writes), copy the overlap into the model's tensors (then in the model's dtype).
    Returns the elements written; every model tensor must be covered.
    """
    regions_by_key = regions_by_key or model_regions(model)
    names = source.plan.names
    written = {key: 0 for key in regions_by_key}
    for item in source.plan.items:
        if item.kind == "object" or item.key not in regions_by_key:
            continue
        merged = compute_item(item, source.regions(item), names, weights, source.method, source.scale)
        for region in regions_by_key[item.key]:
            written[item.key] += copy_overlap(region.data, region.offsets, merged, item.offsets)
    missing = [key for key, n in written.items() if n == 0]
    if missing:
        raise MergeInputError(f"{names[0]}: holds no values for model tensor(s) {', '.join(sorted(missing)[:5])}; is it this architecture?")
    return sum(written.values())
