"""Byte-level I/O of torch_dist checkpoints: read one stored chunk, write one output data file.

A torch_dist directory is `metadata.json` + `.metadata` (a pickled DCP `Metadata`) + data files
`__R_N.distcp` (+ `common.pt` up to megatron-core 0.18). `.metadata.storage_data` maps each stored
chunk (`MetadataIndex(key, offset)`) to `(relative_path, offset, length)`: a tensor chunk is one
`torch.save` blob at that byte range (torch 2.x DCP `FileSystemWriter`, `torch_save`
serialization), a `ShardedObject` (e.g. `_extra_state`) is raw bytes. This module reads and
writes exactly that, so the stock DCP `FileSystemReader` (and thus megatron-core's
`dist_checkpointing.load`) reads what `DataFileWriter` writes; no model and no megatron import.

    meta = read_metadata(path)
    with ChunkReader(path, meta.storage_data) as reader:
        tensor = reader.tensor(index)        # only this chunk's bytes are read
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta

from megatron_demix.runtime.files import atomic_write_bytes, atomic_write_json, write_failure

METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"
BACKEND_FILE = "metadata.json"
# The DCP format version torch 2.13's FileSystemWriter stamps on `.metadata`.
DCP_VERSION = "1.0.0"


class MergeError(ValueError):
    """A merge that failed while running (a write, `--verify`); the message names the file and the fix."""


class MergeInputError(MergeError):
    """A bad input (checkpoint, weight, mixture, flag): the user fixes it and runs again (exit status 2)."""


def output_failure(path: Path, error: BaseException) -> MergeError:
    """A one-line MergeError for a failed write under `path` (full disk, read-only, no permission)."""
    return MergeError(write_failure(path, error) or f"{path}: cannot write ({error}); check the output file system")


def require_finite(tensor: torch.Tensor, name: str, key: str) -> torch.Tensor:
    """`tensor` if every value is finite; else a MergeError naming the input and the tensor. A NaN or inf
    in a component (a diverged run) would spread to every proxy made from it, so it is refused."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise MergeInputError(
            f"{name}: tensor {key} holds {bad} non-finite value(s) (NaN or inf): that checkpoint diverged;"
            " merge an earlier checkpoint of it, or retrain it (training stops on NaN unless"
            " training.check_for_nan_in_loss_and_grad is false)"
        )
    return tensor


def read_metadata(path: Path) -> Metadata:
    """The DCP `Metadata` of a torch_dist checkpoint directory."""
    file = Path(path) / METADATA_FILE
    try:
        with open(file, "rb") as f:
            metadata = pickle.load(f)
    except FileNotFoundError:
        raise MergeInputError(f"{file}: missing; {path} is not a complete torch_dist checkpoint") from None
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise MergeInputError(f"{file}: unreadable ({error}); the checkpoint is incomplete or from another torch") from None
    if not isinstance(metadata, Metadata) or metadata.storage_data is None:
        raise MergeInputError(f"{file}: not a torch.distributed.checkpoint Metadata with storage_data")
    return metadata


class _FileWindow(io.RawIOBase):
    """A read-only seekable view of bytes [start, start+length) of an open file.

    `torch.load` on this reads the record it needs straight from the file (pread), so loading a
    chunk costs one copy of the chunk, not two (bytes + tensor) as with `io.BytesIO(f.read())`.
    """

    def __init__(self, fd: int, start: int, length: int):
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._length - self._pos)
        done = 0
        while done < wanted:
            got = os.preadv(self._fd, [view[done:wanted]], self._start + self._pos + done)
            if got == 0:
                break
            done += got
        self._pos += done
        return done


class ChunkReader:
    """Reads stored chunks of one input checkpoint by their `MetadataIndex` (files opened once)."""

    def __init__(self, path: Path, storage_data: dict, name: str | None = None):
        self.path, self.storage_data, self.name = Path(path), storage_data, name or str(path)
        self._fds: dict[str, int] = {}
        self.bytes_read = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _window(self, index: MetadataIndex) -> _FileWindow:
        info: _StorageInfo = self.storage_data[index]
        if getattr(info, "transform_descriptors", None):
            raise MergeInputError(
                f"{self.name}: key {index.fqn} is stored with DCP transforms {info.transform_descriptors}"
                " (compressed or encrypted); save the component without storage extensions"
            )
        if info.relative_path not in self._fds:
            self._fds[info.relative_path] = os.open(self.path / info.relative_path, os.O_RDONLY)
        self.bytes_read += info.length
        return _FileWindow(self._fds[info.relative_path], info.offset, info.length)

    def tensor(self, index: MetadataIndex) -> torch.Tensor:
        try:
            tensor = torch.load(self._window(index), map_location="cpu", weights_only=True)
        except MergeError:
            raise
        except Exception as error:  # torch raises RuntimeError/UnpicklingError/... on a damaged blob
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MergeInputError(
                f"{self.name}: key {index.fqn} (chunk at {tuple(index.offset or ())}) in data file"
                f" {self.storage_data[index].relative_path} is unreadable ({reason}); the checkpoint is damaged: re-save or re-copy it"
            ) from None
        if not isinstance(tensor, torch.Tensor):
            raise MergeInputError(f"{self.name}: key {index.fqn} holds a {type(tensor).__name__}, not a tensor")
        return tensor

    def raw(self, index: MetadataIndex) -> bytes:
        window = self._window(index)
        data = window.read()
        if len(data) != window._length:
            raise MergeInputError(f"{self.name}: key {index.fqn} is truncated in {self.storage_data[index].relative_path}")
        return data


class DataFileWriter:
    """Appends chunks to one output data file (`__{rank}_0.distcp`) and records where each went.

    Tensors are written as DCP's `torch_save` serialization does (one `torch.save` blob each),
    byte objects verbatim; `records` maps each `MetadataIndex` to its `_StorageInfo` for `.metadata`.
    """

    def __init__(self, directory: Path, rank: int):
        self.relative_path = f"__{rank}_0.distcp"
        self.file = Path(directory) / self.relative_path
        self._stream = None
        self.records: dict[MetadataIndex, _StorageInfo] = {}
        self.bytes_written = 0

    def _append(self, index: MetadataIndex, write) -> None:
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
        self.records[index] = _StorageInfo(self.relative_path, offset, length)
        self.bytes_written += length

    def tensor(self, index: MetadataIndex, tensor: torch.Tensor) -> None:
        # torch.save writes the whole storage: never hand it a view of something larger.
        if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        self._append(index, lambda stream: torch.save(tensor, stream))

    def raw(self, index: MetadataIndex, data: bytes) -> None:
        self._append(index, lambda stream: stream.write(data))

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                os.fsync(stream.fileno())
            except OSError as error:
                raise output_failure(self.file, error) from None
            finally:
                stream.close()


def write_checkpoint_files(directory: Path, state_dict_metadata: dict, records: dict, first_input: Path, provenance: dict) -> None:
    """Rank 0's part: `.metadata`, `metadata.json`, `common.pt` (when the first input has one) and `merge.json`.

    `.metadata` is written last, so a directory with one is complete (as DCP itself does).
    """
    directory = Path(directory)
    atomic_write_bytes(directory / BACKEND_FILE, (Path(first_input) / BACKEND_FILE).read_bytes())
    common = Path(first_input) / COMMON_FILE
    # From megatron-core 0.19 the common state is a ShardedObject inside the data (copied with
    # the other objects) and there is no common.pt; writing one then would shadow it.
    if common.exists():
        state = torch.load(common, map_location="cpu", weights_only=False)
        if isinstance(state, dict):
            # Optimizer state is not merged, so its non-tensor half must not pretend to be there.
            for key in ("optimizer", "opt_param_scheduler"):
                state.pop(key, None)
            state["demix_merge"] = provenance
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
    atomic_write_bytes(directory / METADATA_FILE, pickle.dumps(metadata))


def with_dtype(storage_metadata, dtype: torch.dtype):
    """A `TensorStorageMetadata` like `storage_metadata` whose tensor properties say `dtype`."""
    properties = dataclasses.replace(storage_metadata.properties, dtype=dtype)
    return dataclasses.replace(storage_metadata, properties=properties)
