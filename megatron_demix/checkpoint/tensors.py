"""Tensors of torch_dist checkpoints without a model: whole tensors, regions, and weighted merges in memory.

    read_tensor(ckpt, "decoder.final_layernorm.weight")           # the global tensor, any saved TP/PP
    source = ComponentSource.open(["ckpt/code", "ckpt/math"])      # plans once, reads lazily
    fill_model(model, source, weights=[0.3, 0.7])                  # proxy weights, chunk by chunk
    cached = source.cached()                                       # every region in memory, for many mixtures

Everything goes through the merge library: `merge.plan.build_plan` checks the inputs against each
other (keys, shapes, dtypes, data files) and lists the stored chunks, `merge.items.compute_item`
reads and combines one chunk. So a proxy filled in memory holds exactly the bytes that
`tools/merge/run.py` would write (fp32 accumulation, then the stored dtype), and a model loaded
from that merged checkpoint holds the same values. Memory: one chunk at a time besides the model
(`ComponentSource`), or every component region (`CachedSource.bytes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from megatron_demix.checkpoint.layout import CheckpointError, resolve_checkpoint
from megatron_demix.checkpoint.torch_dist import ChunkReader, read_metadata
from megatron_demix.merge.io import MergeInputError
from megatron_demix.merge.items import compute_item, read_region, region_order, regions
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


def read_tensor(path: str | Path, key: str, offsets: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """The global tensor `key` (or its region at `offsets`/`sizes`), assembled from the stored chunks."""
    directory = torch_dist_dir(path)
    plan = build_plan([directory], [str(path)])
    matching = [item for item in plan.items if item.key == key]
    if not matching:
        raise MergeInputError(f"{path}: no tensor {key!r} (it has {len(plan.items)} chunks of other keys)")
    shape = tuple(plan.state_dict_metadata[key].size)
    offsets = offsets or (0,) * len(shape)
    sizes = sizes or shape
    out = torch.empty(sizes, dtype=matching[0].dtype)
    with ChunkReader(directory, read_metadata(directory).storage_data, str(path)) as reader:
        for item in matching:
            copy_overlap(out, offsets, read_region(reader, item.sources[0], item, as_fp32=False), item.offsets)
    return out


def copy_overlap(dst: torch.Tensor, dst_offsets, src: torch.Tensor, src_offsets) -> int:
    """Copy the part of `src` (a region at `src_offsets` of a global tensor) that overlaps `dst`
    (the region at `dst_offsets`); returns the elements copied (0 when they do not overlap)."""
    for dim, (do, ds, so, ss) in enumerate(zip(dst_offsets, dst.shape, src_offsets, src.shape)):
        lo, hi = max(do, so), min(do + ds, so + ss)
        if hi <= lo:
            return 0
        dst, src = dst.narrow(dim, lo - do, hi - lo), src.narrow(dim, lo - so, hi - lo)
    dst.copy_(src)
    return dst.numel()


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


@dataclass
class ComponentSource:
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
        """`dtype` (same, fp32, bf16, fp16): what merged floating-point tensors are cast to (the merge's --dtype)."""
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
                store[item.index] = [read_region(self._readers[r], item.sources[r], item, as_fp32=False)
                                 for r in region_order(item, self.inputs, self.method)]
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
class CachedSource:
    """Component regions held in memory; `regions` hands out fresh fp32 copies (methods work in place)."""

    plan: Plan
    method: Method
    scale: float
    inputs: int
    store: dict
    """Item index (`MetadataIndex`) -> its regions in `region_order`, in the stored dtype."""

    def regions(self, item: Item) -> Callable[[], object]:
        tensors = iter(self.store[item.index])
        return lambda: _fresh(next(tensors), item.kind == "float")

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for tensors in self.store.values() for t in tensors)

    def close(self) -> None:
        self.store.clear()


def _fresh(tensor: torch.Tensor, floating: bool) -> torch.Tensor:
    """What `read_region(as_fp32=...)` returns, from a cached region: merge methods modify it in place."""
    if not floating:
        return tensor
    return tensor.clone() if tensor.dtype == torch.float32 else tensor.float()


@torch.no_grad()
def fill_model(model, source: ComponentSource | CachedSource, weights: list[float], regions_by_key=None) -> int:
    """Set every model tensor to the merge of the components with `weights` (normalised by the caller).

    Per stored chunk: combine in fp32 with the merge method, cast to the stored dtype (what a merge
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
