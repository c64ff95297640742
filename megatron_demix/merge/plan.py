"""The merge plan: which regions to write, which stored chunks of each input feed them, and which rank does what.

    plan = build_plan(dirs, names, dtype="same", ranks=2)     # dirs: torch_dist directories
    plan.items[i]          # one output chunk and, per input, the stored chunks overlapping it
    plan.assignment[rank]  # item numbers of that rank, balanced by bytes

The output keeps the chunk layout of the first input (so a merge of inputs saved alike writes
what they hold, chunk for chunk). An input saved with another TP/PP has other chunk boundaries:
for each output chunk the plan lists every stored chunk of that input that overlaps it, and the
merge copies the overlapping parts (a stored chunk that spans several output chunks is read once
per output chunk). Everything is checked here, before any data is read: tensor keys, global shapes
and dtypes agree across inputs (objects such as `_extra_state` and RNG state are copied from one
input, `copy_from`: the first unless told), chunks cover each tensor exactly, every data file exists and is
long enough. Optimizer state (`optimizer.*` keys) is left out: merging it has no meaning.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_demix.checkpoint.torch_dist import BytesStorageMetadata, Metadata, MetadataIndex, TensorStorageMetadata, read_metadata
from megatron_demix.merge.io import MergeInputError, with_dtype
from megatron_demix.runtime.dtypes import torch_dtype

SKIPPED_PREFIXES = ("optimizer.",)
_SHOWN = 5  # how many offending keys an error lists


@dataclass(frozen=True)
class Source:
    """A stored chunk of one input that overlaps an output region."""

    index: MetadataIndex
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class Item:
    """One output chunk: a region of a tensor (or a whole byte object) and where its inputs lie."""

    key: str
    kind: str
    """'float' (merged), 'exact' (integer/bool: must agree, copied) or 'object' (bytes: copied from input `copy_from`)."""
    index: MetadataIndex
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype | None
    """Output dtype (None for objects)."""
    sources: tuple[tuple[Source, ...], ...]
    """Per input (the base last, when there is one): the stored chunks overlapping this region."""
    read_bytes: int
    write_bytes: int
    peak_bytes: int
    """Working memory this item needs (see `_peak_bytes`)."""
    copy_from: int = 0
    """Objects: the input whose bytes are copied (--extra-state-source)."""


@dataclass
class Plan:
    dirs: list[Path]
    names: list[str]
    items: list[Item]
    state_dict_metadata: dict
    """The output's `.metadata.state_dict_metadata` (global shapes, chunk layout, output dtypes)."""
    assignment: list[list[int]] = field(default_factory=list)

    @property
    def read_bytes(self) -> int:
        return sum(item.read_bytes for item in self.items)

    @property
    def write_bytes(self) -> int:
        return sum(item.write_bytes for item in self.items)

    @property
    def peak_bytes(self) -> int:
        return max((item.peak_bytes for item in self.items), default=0)

    def describe(self) -> str:
        return (
            f"{len(self.items)} chunks, {self.read_bytes / 1e6:.1f} MB to read, {self.write_bytes / 1e6:.1f} MB to write;"
            f" memory bound per rank: {self.peak_bytes / 1e6:.1f} MB for the largest chunk (n elements: 8n fp32"
            " accumulator and term + the largest stored chunk + n x output itemsize [+ 4n base])"
            " + interpreter and torch"
        )

    def rank_bytes(self, rank: int, outputs: int = 1) -> int:
        """Bytes a rank reads and writes: its items' inputs once, their output once per output (`merge_many`)."""
        return sum(self.items[i].read_bytes + outputs * self.items[i].write_bytes for i in self.assignment[rank])


def _merged_keys(metadata: Metadata) -> dict:
    return {k: v for k, v in metadata.state_dict_metadata.items() if not k.startswith(SKIPPED_PREFIXES)}


def _check_same_keys(all_md: list[dict], names: list[str]) -> None:
    reference = set(all_md[0])
    for md, name in zip(all_md[1:], names[1:]):
        missing, extra = sorted(reference - set(md)), sorted(set(md) - reference)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} key(s) of {names[0]}: {', '.join(missing[:_SHOWN])}")
            if extra:
                parts.append(f"has {len(extra)} key(s) {names[0]} lacks: {', '.join(extra[:_SHOWN])}")
            raise MergeInputError(f"{name}: {'; '.join(parts)}. All inputs must be the same architecture")


def _check_same_tensors(all_md: list[dict], names: list[str]) -> None:
    for key, ref in all_md[0].items():
        for md, name in zip(all_md[1:], names[1:]):
            other = md[key]
            if tuple(other.size) != tuple(ref.size):
                raise MergeInputError(
                    f"{name}: key {key} has shape {tuple(other.size)}, {names[0]} has {tuple(ref.size)}."
                    " Inputs must share the architecture (and padded vocabulary)"
                )
            if other.properties.dtype != ref.properties.dtype:
                raise MergeInputError(
                    f"{name}: key {key} is {other.properties.dtype}, {names[0]} has {ref.properties.dtype};"
                    " save every component with the same precision"
                )


def _check_data_files(path: Path, metadata: Metadata, name: str) -> None:
    """Every data file named by `.metadata` exists and holds every byte range it is said to hold."""
    needed: dict[str, tuple[int, str]] = {}
    for index, info in metadata.storage_data.items():
        if index.fqn.startswith(SKIPPED_PREFIXES):
            continue
        end = info.offset + info.length
        if end > needed.get(info.relative_path, (-1, ""))[0]:
            needed[info.relative_path] = (end, index.fqn)
    for relative, (end, key) in sorted(needed.items()):
        file = Path(path) / relative
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            raise MergeInputError(f"{name}: data file {file} is missing (it holds key {key}); the checkpoint is incomplete") from None
        if size < end:
            raise MergeInputError(
                f"{name}: data file {file} is truncated ({size} bytes, key {key} ends at byte {end});"
                " the checkpoint is incomplete: re-save or re-copy it"
            )


def _overlap(a_off, a_size, b_off, b_size) -> int:
    """Elements in the intersection of two boxes."""
    n = 1
    for ao, asz, bo, bsz in zip(a_off, a_size, b_off, b_size):
        n *= max(0, min(ao + asz, bo + bsz) - max(ao, bo))
    return n


def _sources(key: str, offsets, sizes, md: TensorStorageMetadata, name: str) -> tuple[Source, ...]:
    """The stored chunks of one input overlapping the region, checked to cover it exactly once."""
    for chunk in md.chunks:  # inputs saved alike: the same chunk
        if tuple(chunk.offsets) == offsets and tuple(chunk.sizes) == sizes:
            return (Source(MetadataIndex(key, offsets), offsets, sizes),)
    found, covered = [], 0
    for chunk in md.chunks:
        n = _overlap(offsets, sizes, chunk.offsets, chunk.sizes)
        if n:
            found.append(Source(MetadataIndex(key, tuple(chunk.offsets)), tuple(chunk.offsets), tuple(chunk.sizes)))
            covered += n
    if covered != math.prod(sizes):
        raise MergeInputError(
            f"{name}: the stored chunks of key {key} cover {covered} of the {math.prod(sizes)} elements of region"
            f" offsets={offsets} sizes={sizes}; its .metadata is inconsistent"
        )
    return tuple(found)


def _peak_bytes(numel: int, dtype: torch.dtype, largest_source: int, has_base: bool) -> int:
    """Working memory of one item: fp32 accumulator and fp32 term (4n each), one stored chunk being
    loaded (its bytes), the fp32 base region for task arithmetic (4n), the output cast (n x itemsize)."""
    return 8 * numel + largest_source + (4 * numel if has_base else 0) + numel * dtype.itemsize


def build_plan(dirs: list[Path], names: list[str], *, dtype: str = "same", ranks: int = 1, has_base: bool = False,
               copy_from: int = 0) -> Plan:
    """Read and cross-check every input's `.metadata` and plan the merge (no tensor data is read).

    `dirs`/`names`: torch_dist directories and how errors name them, the base (if any) last.
    `copy_from`: the input whose objects are copied.
    """
    metadata = [read_metadata(d) for d in dirs]
    all_md = [_merged_keys(m) for m in metadata]
    # Objects (`_extra_state`, RNG state, ...) come from one input alone (`copy_from`); their keys name the
    # saving layout (`rng_state/shard_0.1_2.2`), so only tensors must match across inputs.
    tensors = [{k: v for k, v in md.items() if isinstance(v, TensorStorageMetadata)} for md in all_md]
    _check_same_keys(tensors, names)
    _check_same_tensors(tensors, names)
    for d, m, name in zip(dirs, metadata, names):
        _check_data_files(d, m, name)

    items, out_md = [], {}
    for key, md in all_md[copy_from].items():
        if isinstance(md, BytesStorageMetadata):
            index = MetadataIndex(key)
            length = metadata[copy_from].storage_data[index].length
            items.append(Item(key, "object", index, (), (), None, ((Source(index, (), ()),),), length, length, 2 * length,
                              copy_from))
            out_md[key] = md
    for key, md in all_md[0].items():
        if isinstance(md, BytesStorageMetadata):
            continue
        in_dtype = md.properties.dtype
        floating = in_dtype.is_floating_point
        out_dtype = torch_dtype(dtype) if floating and dtype != "same" else in_dtype
        out_md[key] = with_dtype(md, out_dtype)
        for chunk in md.chunks:
            offsets, sizes = tuple(chunk.offsets), tuple(chunk.sizes)
            sources = tuple(_sources(key, offsets, sizes, other[key], name) for other, name in zip(tensors, names))
            lengths = [metadata[i].storage_data[s.index].length for i, per in enumerate(sources) for s in per]
            numel = math.prod(sizes)
            items.append(Item(
                key, "float" if floating else "exact", MetadataIndex(key, offsets), offsets, sizes, out_dtype, sources,
                read_bytes=sum(lengths), write_bytes=numel * out_dtype.itemsize,
                peak_bytes=_peak_bytes(numel, out_dtype, max(lengths), has_base),
            ))
    if not any(item.kind != "object" for item in items):
        raise MergeInputError(f"{names[0]}: holds no model tensors (only optimizer state or objects); nothing to merge")
    plan = Plan(list(map(Path, dirs)), list(names), items, out_md)
    plan.assignment = balance([item.read_bytes + item.write_bytes for item in items], ranks)
    return plan


def balance(costs: list[int], ranks: int) -> list[list[int]]:
    """Largest first, each to the least loaded rank (within 4/3 of optimal); each rank's list in file order."""
    loads, assignment = [0] * ranks, [[] for _ in range(ranks)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        rank = min(range(ranks), key=loads.__getitem__)
        assignment[rank].append(i)
        loads[rank] += costs[i]
    return [sorted(a) for a in assignment]
