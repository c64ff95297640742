"""Reading torch_dist checkpoints at the byte level: the DCP `.metadata` and one stored chunk at a time.

A torch_dist directory is `metadata.json` + `.metadata` (a pickled DCP `Metadata`) + data files
`__R_N.distcp` (+ `common.pt` up to megatron-core 0.18). `.metadata.storage_data` maps each stored
chunk (`MetadataIndex(key, offset)`) to `(relative_path, offset, length)`: a tensor chunk is one
`torch.save` blob at that byte range (torch 2.x DCP `FileSystemWriter`, `torch_save`
serialization), a `ShardedObject` (e.g. `_extra_state`) is raw bytes. No model and no megatron
import: the merge, the in-memory proxies and the exporter all read through this module.

    meta = read_metadata(path)
    with ChunkReader(path, meta.storage_data) as reader:
        tensor = reader.tensor(index)        # only this chunk's bytes are read

Damaged or unreadable data raises `CheckpointDataError` (a `CheckpointError`: bad input, exit 2).

Start-up: importing `torch.distributed.checkpoint` runs its package `__init__`, which pulls in
DTensor, the planners and the Hugging Face storage (about a third of the merge tool's import
time). Only the metadata dataclasses are needed here (and the planner's, which megatron-core's
`.metadata` names), so `dcp_module` imports those modules alone, and `StorageInfo` stands in for
the writer's `filesystem._StorageInfo` (same fields, pickled under DCP's name by `dump_metadata`,
so DCP's own reader reads our `.metadata`).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import io
import os
import pickle
import re
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from megatron_demix.checkpoint.layout import CheckpointError

METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"
COMMON_OBJECT = "common_state/shard_0_1"
"""Where megatron-core 0.19 keeps the common state instead: ShardedObject `common_state` (shape (1,)) in the data."""
BACKEND_FILE = "metadata.json"
# The DCP format version torch 2.13's FileSystemWriter stamps on `.metadata`.
DCP_VERSION = "1.0.0"


class CheckpointDataError(CheckpointError):
    """A torch_dist checkpoint whose `.metadata` or data is missing, damaged or not what it claims."""


DCP_PACKAGE = "torch.distributed.checkpoint"


def dcp_module(name: str = "metadata") -> types.ModuleType:
    """`torch.distributed.checkpoint.<name>` (a light module: metadata, planner), imported without running its
    package's `__init__` when the package is not loaded yet. A later `import torch.distributed.checkpoint`
    then imports the package in full, reusing these very modules (same classes; `_CompletePackage`)."""
    full = f"{DCP_PACKAGE}.{name}"
    if DCP_PACKAGE in sys.modules or full in sys.modules:
        return importlib.import_module(full)
    import torch.distributed as dist

    stub = types.ModuleType(DCP_PACKAGE)
    stub.__path__ = list(importlib.util.find_spec(DCP_PACKAGE).submodule_search_locations)
    sys.modules[DCP_PACKAGE] = stub
    try:
        return importlib.import_module(full)
    finally:
        del sys.modules[DCP_PACKAGE]
        if getattr(dist, "checkpoint", None) is stub:
            delattr(dist, "checkpoint")
        if not any(isinstance(finder, _CompletePackage) for finder in sys.meta_path):
            sys.meta_path.insert(0, _CompletePackage())


class _CompletePackage(importlib.abc.MetaPathFinder):
    """When the DCP package itself is imported, give it back the submodules loaded under the stub as
    attributes (`dcp.metadata`), which the import system sets only when it loads a submodule itself."""

    def find_spec(self, name, path=None, target=None):
        if name != DCP_PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            for full in [m for m in sys.modules if m.startswith(f"{name}.") and m.count(".") == name.count(".") + 1]:
                setattr(module, full.rsplit(".", 1)[1], sys.modules[full])
            run(module)

        spec.loader.exec_module = exec_module
        return spec


_metadata = dcp_module("metadata")
Metadata, MetadataIndex, StorageMeta = _metadata.Metadata, _metadata.MetadataIndex, _metadata.StorageMeta
TensorStorageMetadata, BytesStorageMetadata = _metadata.TensorStorageMetadata, _metadata.BytesStorageMetadata

STORAGE_INFO_CLASS = (f"{DCP_PACKAGE}.filesystem", "_StorageInfo")
"""Where DCP's FileSystemWriter/Reader keep the class of `Metadata.storage_data` values."""


@dataclass
class StorageInfo:
    """Where a stored chunk lies in a data file: the fields of DCP's `filesystem._StorageInfo`."""

    relative_path: str
    offset: int
    length: int
    transform_descriptors: Sequence[str] | None = None

    def __getstate__(self):  # as DCP's: unset fields are left out of the pickle
        return {k: v for k, v in self.__dict__.items() if v is not None}


METADATA_CLASSES = {
    f"{DCP_PACKAGE}.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                                "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    f"{DCP_PACKAGE}.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset"},
    "pathlib": {"PosixPath"},
}
"""What a `.metadata` may name (read from those torch 2.13's DCP writes under megatron-core 0.16.1 and 0.19.2:
the metadata and planner dataclasses, `torch.Size`, dtypes, the layout helper), plus torch's dtypes and
`_StorageInfo`. Anything else (`os.system` in a crafted file) is refused before it is looked up."""


class _Refused(pickle.UnpicklingError):
    """A `.metadata` naming a global outside METADATA_CLASSES."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == STORAGE_INFO_CLASS:
            return StorageInfo
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name not in METADATA_CLASSES.get(module, ()):
            raise _Refused(f"it would load {module}.{name}, which a checkpoint's metadata never holds")
        if module.startswith(f"{DCP_PACKAGE}."):  # megatron-core's saves also name planner classes
            dcp_module(module[len(DCP_PACKAGE) + 1:])
        return super().find_class(module, name)


class _MetadataPickler(pickle._Pickler):  # the Python pickler: its save_global can be told a class's DCP name
    def save_global(self, obj, name=None):
        if obj is not StorageInfo:
            return super().save_global(obj, name)
        module, qualname = STORAGE_INFO_CLASS
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def dump_metadata(metadata) -> bytes:
    """`.metadata` bytes that DCP's FileSystemReader (and megatron-core) load, with `StorageInfo`s as `_StorageInfo`s."""
    buffer = io.BytesIO()
    _MetadataPickler(buffer, protocol=4).dump(metadata)
    return buffer.getvalue()


def read_metadata(path: Path) -> Metadata:
    """The DCP `Metadata` of a torch_dist checkpoint directory."""
    file = Path(path) / METADATA_FILE
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointDataError(f"{file}: missing; {path} is not a complete torch_dist checkpoint") from None
    except _Refused as error:
        raise CheckpointDataError(f"{file}: refused: {error}; the file is crafted or damaged: re-copy the checkpoint") from None
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError) as error:
        raise CheckpointDataError(f"{file}: unreadable ({error}); the checkpoint is incomplete or from another torch") from None
    if not isinstance(metadata, Metadata) or metadata.storage_data is None:
        raise CheckpointDataError(f"{file}: not a torch.distributed.checkpoint Metadata with storage_data")
    return metadata


def check_checkpoint_files(path: Path) -> Metadata:
    """The `.metadata` (read against the allow-list), once every data file it names holds the bytes it lists:
    run before megatron-core's loader, whose DCP reader unpickles `.metadata` as is and meets a truncated
    data file as a bare EOFError."""
    metadata = read_metadata(path)
    ends: dict[str, tuple[int, str]] = {}
    for index, info in metadata.storage_data.items():
        if info.offset + info.length > ends.get(info.relative_path, (0, ""))[0]:
            ends[info.relative_path] = (info.offset + info.length, index.fqn)
    for relative, (end, key) in sorted(ends.items()):
        file = Path(path) / relative
        size = file.stat().st_size if file.is_file() else None
        if size is None or size < end:
            found = "is missing" if size is None else f"ends at byte {size}"
            raise CheckpointDataError(f"{file}: {found}, but key {key} is stored up to byte offset {end}; the checkpoint"
                                      " is truncated (an interrupted copy or save): re-copy or re-save it")
    return metadata


def read_common_state(path: Path):
    """The checkpoint's non-sharded ("common") state, None when it has none: `common.pt` up to
    megatron-core 0.18; from 0.19 the object `COMMON_OBJECT` in the data (a one-element list)."""
    path = Path(path)
    if (path / COMMON_FILE).exists():
        return load_torch_file(path / COMMON_FILE, str(path / COMMON_FILE), map_location="cpu")
    storage = read_metadata(path).storage_data
    index = next((i for i in storage if i.fqn == COMMON_OBJECT), None)
    if index is None:
        return None
    with ChunkReader(path, storage) as reader:
        data = reader.raw(index)
    where = f"{path}: object {COMMON_OBJECT} in {storage[index].relative_path}"
    return load_torch_file(io.BytesIO(data), where, map_location="cpu")[0]


TORCH_FILE_GLOBALS = frozenset({
    "argparse.Namespace", "types.SimpleNamespace", "pathlib.PosixPath", "_io.BytesIO", "io.BytesIO", "signal.Signals",
    "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "torch._C.Generator",
    "megatron.core.enums.ModelType", "megatron.core.transformer.enums.AttnBackend",
    "megatron.core.transformer.enums.CudaGraphScope", "megatron.core.transformer.enums.CudaGraphModule",
    "megatron.core.transformer.enums.InferenceCudaGraphScope", "megatron.core.optimizer.optimizer_config.OptimizerConfig",
    "megatron.core.rerun_state_machine.RerunDiagnostic", "megatron.core.rerun_state_machine.RerunMode",
    "megatron.core.rerun_state_machine.RerunState",
})
"""Objects beyond tensors that a Megatron checkpoint's `torch.save` files hold (`common.pt`, 0.19's common
state, legacy rank files): Megatron-LM's `args` Namespace and its enums, numpy RNG state, `_extra_state`
buffers. megatron-core registers the same list when imported (megatron/core/safe_globals.py); this module
imports no megatron, so it names them itself, and imports one only when a file names it."""


def _refused(where: str, name: str) -> CheckpointDataError:
    return CheckpointDataError(
        f"{where}: refused: it would load {name}, which no checkpoint holds (only tensors and Megatron's args,"
        " enums and RNG state are loaded); the file is crafted or not a Megatron checkpoint"
    )


def _global(qualified: str, where: str):
    module, _, name = qualified.rpartition(".")
    try:
        with warnings.catch_warnings():  # numpy 2 warns on importing numpy.core (the name numpy 1's files record)
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CheckpointDataError(f"{where}: holds a {qualified}; read it where that module is installed") from None


def load_torch_file(file, where: str, **load_args):
    """`torch.load(file, weights_only=True)` that also accepts TORCH_FILE_GLOBALS; a file naming any other
    global is refused with a CheckpointDataError naming `where` and the global, and nothing in it runs.
    The megatron ones are imported only when the file names them (torch's scan of the pickle, which runs
    nothing; numpy's dtype classes are built without being named, so the others are always allowed)."""
    try:
        named = set(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # not a zip file (torch's legacy format): torch.load's own check below names the global
        named = set()
    finally:
        if hasattr(file, "seek"):
            file.seek(0)
    refused = sorted(named - TORCH_FILE_GLOBALS)
    if refused:
        raise _refused(where, refused[0])
    allowed = [(_global(name, where), name) for name in TORCH_FILE_GLOBALS if name in named or not name.startswith("megatron.")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, weights_only=True, **load_args)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        text = str(error)
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", text) if isinstance(error, pickle.UnpicklingError) else None
        if found:
            raise _refused(where, found.group(1) or found.group(2)) from None
        reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise CheckpointDataError(f"{where}: unreadable ({reason}); the file is damaged: re-save or re-copy it") from None


class _FileWindow(io.RawIOBase):
    """A read-only seekable view of bytes [start, start+length) of an open file.

    `torch.load` on this reads the record it needs straight from the file (pread), so loading a
    chunk costs one copy of the chunk, not two (bytes + tensor) as with `io.BytesIO(f.read())`.
    """

    def __init__(self, fd: int, start: int, length: int):
        self._fd, self._start, self.length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.length - self._pos)
        done = 0
        while done < wanted:
            got = os.preadv(self._fd, [view[done:wanted]], self._start + self._pos + done)
            if got == 0:
                break
            done += got
        self._pos += done
        return done


class ChunkReader:
    """Reads stored chunks of one checkpoint by their `MetadataIndex` (files opened once)."""

    def __init__(self, path: Path, storage_data: dict, name: str | None = None):
        self.path, self.storage_data, self.name = Path(path), storage_data, name or str(path)
        self._fds: dict[str, int] = {}
        self.bytes_read = 0
        self.seconds = 0.0
        """Time spent reading and deserialising chunks (for the merge's phase profile)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _window(self, index: MetadataIndex) -> _FileWindow:
        info: StorageInfo = self.storage_data[index]
        if getattr(info, "transform_descriptors", None):
            raise CheckpointDataError(
                f"{self.name}: key {index.fqn} is stored with DCP transforms {info.transform_descriptors}"
                " (compressed or encrypted); save the checkpoint without storage extensions"
            )
        if info.relative_path not in self._fds:
            self._fds[info.relative_path] = os.open(self.path / info.relative_path, os.O_RDONLY)
        self.bytes_read += info.length
        return _FileWindow(self._fds[info.relative_path], info.offset, info.length)

    def tensor(self, index: MetadataIndex) -> torch.Tensor:
        start = time.perf_counter()
        try:
            tensor = torch.load(self._window(index), map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except Exception as error:  # torch raises RuntimeError/UnpicklingError/... on a damaged blob
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointDataError(
                f"{self.name}: key {index.fqn} (chunk at {tuple(index.offset or ())}) in data file"
                f" {self.storage_data[index].relative_path} is unreadable ({reason}); the checkpoint is damaged: re-save or re-copy it"
            ) from None
        finally:
            self.seconds += time.perf_counter() - start
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointDataError(f"{self.name}: key {index.fqn} holds a {type(tensor).__name__}, not a tensor")
        return tensor

    def raw(self, index: MetadataIndex) -> bytes:
        start = time.perf_counter()
        window = self._window(index)
        data = window.read()
        self.seconds += time.perf_counter() - start
        if len(data) != window.length:
            raise CheckpointDataError(f"{self.name}: key {index.fqn} is truncated in {self.storage_data[index].relative_path}")
        return data
