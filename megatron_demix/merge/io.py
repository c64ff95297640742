"""Writing torch_dist checkpoints at the byte level: one output data file per rank, then `.metadata`.

The reading side (`read_metadata`, `ChunkReader`, the format's file names) is
`megatron_demix.checkpoint.torch_dist`; this module writes the same format, so the stock DCP
`FileSystemReader` (and thus megatron-core's `dist_checkpointing.load`) reads what
`DataFileWriter` writes. No model and no megatron import.

    writer = DataFileWriter(out_dir, rank)
    writer.tensor(index, tensor)             # appends one torch.save blob, records where it went
    write_checkpoint_files(out_dir, state_dict_metadata, records, first_input, common_source, provenance)
"""
from __future__ import annotations

import ctypes
import dataclasses
import io
import math
import os
import time
from pathlib import Path

import torch

from megatron_demix.checkpoint.layout import CheckpointError
from megatron_demix.checkpoint.torch_dist import (
    BACKEND_FILE, COMMON_FILE, DCP_VERSION, METADATA_FILE, Metadata, MetadataIndex, StorageInfo, StorageMeta, dump_metadata,
    read_common_state,
)
from megatron_demix.runtime.errors import BAD_INPUT, FAILED
from megatron_demix.runtime.files import atomic_write_bytes, atomic_write_json, write_failure


class MergeError(ValueError):
    """A merge that failed while running (a write, `--verify`); the message names the file and the fix."""
    exit_status = FAILED


class MergeInputError(MergeError):
    """A bad input (checkpoint, weight, mixture, flag): the user fixes it and runs again (exit status 2)."""
    exit_status = BAD_INPUT


def merge_failure(error: BaseException) -> BaseException:
    """`error` as the merge reports it: a damaged or unreadable checkpoint (`CheckpointError` from the
    reader) is a bad input, MergeInputError with the same message; anything else unchanged."""
    if isinstance(error, CheckpointError) and not isinstance(error, MergeError):
        return MergeInputError(str(error))
    return error


def output_failure(path: Path, error: BaseException) -> MergeError:
    """A one-line MergeError for a failed write under `path` (full disk, read-only, no permission)."""
    return MergeError(write_failure(path, error) or f"{path}: cannot write ({error}); check the output file system")


def require_finite(tensor: torch.Tensor, name: str, key: str) -> torch.Tensor:
    """`tensor` if every value is finite; else a MergeError naming the input and the tensor. A NaN or inf
    in a component (a diverged run) would spread to every proxy made from it, so it is refused.

    A finite sum proves every value finite (a NaN or inf never sums to a finite number) in one read-only
    pass, ~15x faster than `isfinite(t).all()` (which writes a bool tensor); only a non-finite sum (a bad
    value, or an overflow of finite ones) takes the exact test."""
    if not tensor.is_floating_point() or math.isfinite(tensor.sum()):
        return tensor
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise MergeInputError(
            f"{name}: tensor {key} holds {bad} non-finite value(s) (NaN or inf): that checkpoint diverged;"
            " merge an earlier checkpoint of it, or retrain it (training stops on NaN unless"
            " training.check_for_nan_in_loss_and_grad is false)"
        )
    return tensor


def _writeback_hint():
    """`hint(fd, offset, length)`: start writing those bytes to disk now, without waiting (Linux's
    `sync_file_range(SYNC_FILE_RANGE_WRITE)`); a no-op where libc lacks it. Errors are left to the fsync."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd, offset, length: call(fd, offset, length, 2)  # 2: SYNC_FILE_RANGE_WRITE


_start_writeback = _writeback_hint()


class DataFileWriter:
    """Appends chunks to one output data file (`__{rank}_0.distcp`) and records where each went.

    Tensors are written as DCP's `torch_save` serialization does (one `torch.save` blob each),
    byte objects verbatim; `records` maps each `MetadataIndex` to its `StorageInfo` for `.metadata`.
    """

    def __init__(self, directory: Path, rank: int):
        self.relative_path = f"__{rank}_0.distcp"
        self.file = Path(directory) / self.relative_path
        self._stream = None
        self.records: dict[MetadataIndex, StorageInfo] = {}
        self.bytes_written = 0
        self.seconds = 0.0
        """Time spent serialising, writing and syncing (for the merge's phase profile)."""

    def _append(self, index: MetadataIndex, write) -> None:
        start = time.perf_counter()
        try:
            if self._stream is None:  # created lazily: a rank without work leaves no empty file
                # Unbuffered: torch.save hands over each tensor's storage as one record, which then goes
                # to the kernel without a copy through a Python buffer (a few small header writes cost less).
                self._stream = open(self.file, "wb", buffering=0)
            offset = self._stream.tell()
            write(self._stream)
        except (OSError, RuntimeError) as error:  # RuntimeError: torch.save's own file errors
            raise output_failure(self.file, error) from None
        length = self._stream.tell() - offset
        # The disk writes this chunk while the next one is read and combined; close()'s fsync then has
        # little left to wait for (measured: fsync 3 s -> under 0.6 s of a 4 x 1.4 GB merge on 1 rank).
        _start_writeback(self._stream.fileno(), offset, length)
        self.records[index] = StorageInfo(self.relative_path, offset, length)
        self.bytes_written += length
        self.seconds += time.perf_counter() - start

    def tensor(self, index: MetadataIndex, tensor: torch.Tensor) -> None:
        # torch.save writes the whole storage: never hand it a view of something larger.
        if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        self._append(index, lambda stream: torch.save(tensor, stream))

    def raw(self, index: MetadataIndex, data: bytes) -> None:
        self._append(index, lambda stream: stream.write(data))

    def close(self) -> None:
        if self._stream is not None:
            start = time.perf_counter()
            stream, self._stream = self._stream, None
            try:
                os.fsync(stream.fileno())
            except OSError as error:
                raise output_failure(self.file, error) from None
            finally:
                stream.close()
                self.seconds += time.perf_counter() - start


def write_checkpoint_files(directory: Path, state_dict_metadata: dict, records: dict, first_input: Path, common_source: Path,
                           provenance: dict) -> None:
    """Rank 0's part: `.metadata`, `metadata.json`, `common.pt` (when `common_source` has a common state) and `merge.json`.

    The common state gets `demix_merge` (the provenance, so a copy without `merge.json` still says
    what it is) and the output's `iteration`. `.metadata` is written last, so a directory with one
    is complete (as DCP itself does).
    """
    directory = Path(directory)
    atomic_write_bytes(directory / BACKEND_FILE, (Path(first_input) / BACKEND_FILE).read_bytes())
    # From megatron-core 0.19 the input's common state is an object inside its data (copied with the
    # other objects, unchanged). The output's, with the merge's iteration and provenance, always goes
    # to common.pt, which every release reads first (0.19 before that object; 0.16 knows only it).
    state = read_common_state(common_source)
    if state is not None:
        if isinstance(state, dict):
            # Optimizer state is not merged, so its non-tensor half must not pretend to be there.
            for key in ("optimizer", "opt_param_scheduler"):
                state.pop(key, None)
            state["demix_merge"] = provenance
            if "iteration" in state:
                state["iteration"] = provenance["iteration"]
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(directory / COMMON_FILE, buffer.getvalue())
    atomic_write_json(directory / "merge.json", provenance)
    metadata = Metadata(
        state_dict_metadata=state_dict_metadata,
        storage_data=records,
        storage_meta=StorageMeta(checkpoint_id=str(directory)),
        version=DCP_VERSION,
    )
    atomic_write_bytes(directory / METADATA_FILE, dump_metadata(metadata))


def with_dtype(storage_metadata, dtype: torch.dtype):
    """A `TensorStorageMetadata` like `storage_metadata` whose tensor properties say `dtype`."""
    properties = dataclasses.replace(storage_metadata.properties, dtype=dtype)
    return dataclasses.replace(storage_metadata, properties=properties)
