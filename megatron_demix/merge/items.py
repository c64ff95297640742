"""One plan item at a time: read the overlapping regions of the inputs, combine them, return the output chunk.

    regions = ReadAhead(readers, items, method)           # a background thread, one region ahead
    for item in items:
        result = compute_item(item, regions.next, [r.name for r in readers], weights, method, scale)

The regions of an item are consumed in a fixed order (`region_order`): the base first (task
arithmetic), then input 0, 1, ... That lets `ReadAhead` load the next region (pread + torch.load,
mostly outside the GIL) while the merge multiplies, adds and writes the current one: a single
rank then runs near the I/O floor. It holds at most one region beyond the one in use, which the
memory bound in `plan._peak_bytes` counts.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import torch

from megatron_demix.merge.io import ChunkReader, MergeError
from megatron_demix.merge.methods import Method
from megatron_demix.merge.plan import Item, Source


def read_region(reader: ChunkReader, sources: tuple[Source, ...], item: Item, as_fp32: bool) -> torch.Tensor:
    """The item's region of one input, assembled from the stored chunks that overlap it (a fresh tensor)."""
    region = None
    for source in sources:
        tensor = reader.tensor(source.index)
        if tuple(tensor.shape) != source.sizes:
            raise MergeError(
                f"{reader.name}: key {item.key} chunk at {source.offsets} holds shape {tuple(tensor.shape)},"
                f" but .metadata says {source.sizes}; the checkpoint is damaged"
            )
        if source.offsets == item.offsets and source.sizes == item.sizes:
            return tensor.float() if as_fp32 else tensor
        if region is None:
            region = torch.empty(item.sizes, dtype=torch.float32 if as_fp32 else tensor.dtype)
        dst, src = region, tensor
        for dim, (ro, rs, so, ss) in enumerate(zip(item.offsets, item.sizes, source.offsets, source.sizes)):
            lo, hi = max(ro, so), min(ro + rs, so + ss)
            dst, src = dst.narrow(dim, lo - ro, hi - lo), src.narrow(dim, lo - so, hi - lo)
        dst.copy_(src)
    return region


def region_order(item: Item, inputs: int, method: Method) -> list[int]:
    """Which reader each region of `item` comes from, in the order `compute_item` consumes them."""
    if item.kind == "object":
        return [0]
    if item.kind == "float" and method.needs_base:
        return [inputs, *range(inputs)]  # the base is the reader after the inputs
    return list(range(inputs))


def load(readers: list[ChunkReader], item: Item, reader: int):
    if item.kind == "object":
        return readers[0].raw(item.index)
    return read_region(readers[reader], item.sources[reader], item, as_fp32=item.kind == "float")


def sequential(readers: list[ChunkReader], item: Item, method: Method, inputs: int) -> Callable[[], object]:
    """The regions of one item, loaded on demand in the calling thread (for --verify)."""
    regions = (load(readers, item, r) for r in region_order(item, inputs, method))
    return lambda: next(regions)


class ReadAhead:
    """Loads the regions of `items` on a background thread, at most one ahead of `next()`.

    A failed load is raised by the `next()` that would have returned it.
    """

    def __init__(self, readers: list[ChunkReader], items: list[Item], method: Method, inputs: int):
        self._queue: queue.Queue = queue.Queue()
        self._slot = threading.Semaphore(1)  # one region may be loaded ahead of the one in use
        self._stop = False
        jobs = ((item, r) for item in items for r in region_order(item, inputs, method))
        self._thread = threading.Thread(target=self._run, args=(readers, jobs), daemon=True)
        self._thread.start()

    def _run(self, readers: list[ChunkReader], jobs: Iterator) -> None:
        for item, reader in jobs:
            self._slot.acquire()
            if self._stop:
                return
            try:
                self._queue.put((load(readers, item, reader), None))
            except Exception as error:
                self._queue.put((None, error))
                return

    def next(self):
        value, error = self._queue.get()
        self._slot.release()
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        """Stop the thread (before the readers' files are closed)."""
        self._stop = True
        self._slot.release()
        self._thread.join()


def compute_item(item: Item, next_region: Callable[[], object], names: list[str], weights: list[float], method: Method, scale: float):
    """The output of one item: merged fp32 cast to the output dtype, a checked copy, or an object's bytes.

    `next_region()` returns the item's regions in `region_order`; `names[i]` names reader i in errors.
    """
    if item.kind == "object":
        return next_region()
    if item.kind == "exact":
        first = next_region()
        for name in names[1 : len(weights)]:
            if not torch.equal(next_region(), first):
                raise MergeError(
                    f"{name}: key {item.key} ({first.dtype}, region at {item.offsets}) differs from"
                    f" {names[0]}; non-floating tensors are copied, not averaged, so they must agree"
                )
        return first
    base = next_region() if method.needs_base else None
    merged = method.combine(lambda i: next_region(), weights, scale=scale, base=base)
    return merged if merged.dtype == item.dtype else merged.to(item.dtype)
