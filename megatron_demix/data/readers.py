"""Read documents from a dataset's files, with errors that say file:line and the fix.

Formats (DatasetConfig.format, `auto` decides by suffix):
- `jsonl`: one JSON object per line (`.jsonl`, `.json`); the text is in `text_field`.
- `text`: each file is one document (`.txt`, or any other suffix).
- a directory: every `.jsonl`/`.json`/`.txt` file in it, recursively, in sorted order.
- `indexed`: an already-built Megatron dataset prefix (`<prefix>.bin` + `<prefix>.idx`); it is
  used as it is, never re-tokenized, so it has no documents to read here.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from megatron_demix.data.config import DatasetConfig

JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt",)


class DataError(ValueError):
    pass


def is_indexed(path: Path) -> bool:
    return Path(f"{path}.bin").is_file() and Path(f"{path}.idx").is_file()


def dataset_format(dataset: DatasetConfig, path: Path) -> str:
    if dataset.format != "auto":
        return dataset.format
    if is_indexed(path):
        return "indexed"
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def source_files(dataset: DatasetConfig, path: Path) -> list[Path]:
    """The files of a jsonl/text dataset (a directory expands to its data files)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in JSONL_SUFFIXES + TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: directory of dataset '{dataset.name}' holds no .jsonl, .json or .txt files")
        return files
    if not path.is_file():
        raise DataError(
            f"{path}: dataset '{dataset.name}' not found; fix datasets[].path in the experiment file"
            " (a .jsonl/.txt file, a directory of them, or a Megatron .bin/.idx prefix)"
        )
    return [path]


def _jsonl_documents(dataset: DatasetConfig, file: Path) -> Iterator[tuple[str, int]]:
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"{where}: not valid JSON ({error}); every line must be one JSON object") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
            if dataset.text_field not in record:
                raise DataError(
                    f"{where}: no field '{dataset.text_field}' (fields: {', '.join(sorted(record)) or 'none'});"
                    f" set text_field of dataset '{dataset.name}'"
                )
            text = record[dataset.text_field]
            if not isinstance(text, str):
                raise DataError(f"{where}: field '{dataset.text_field}' is {type(text).__name__}, expected a string")
            yield text, len(raw)


def iter_documents(dataset: DatasetConfig, path: Path) -> Iterator[tuple[str, int]]:
    """Yield (document text, bytes consumed) for every non-empty document of the dataset."""
    fmt = dataset_format(dataset, path)
    if fmt == "indexed":
        raise DataError(f"{path}: dataset '{dataset.name}' is an indexed dataset; it has no text to read")
    for file in source_files(dataset, path):
        if fmt == "jsonl" or (path.is_dir() and file.suffix in JSONL_SUFFIXES):
            yield from ((t, n) for t, n in _jsonl_documents(dataset, file) if t)
        else:
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{file}: not UTF-8 text ({error})") from None
            if text.strip():
                yield text, len(raw)


def total_bytes(dataset: DatasetConfig, path: Path) -> int:
    """Size of the dataset's files, for a progress bar with an ETA."""
    return sum(f.stat().st_size for f in source_files(dataset, path))


FULL_HASH_BYTES = 64 << 20
"""Files up to this size are hashed whole; larger ones by samples (see `file_fingerprint`)."""
SAMPLE_BYTES, SAMPLES = 1 << 20, 16


def _content_hash(file: Path, size: int) -> str:
    """blake2b of the whole file, or for a big file of its size and SAMPLES evenly spaced 1 MiB blocks
    (first and last included): reading 16 MiB notices any append, truncation or rewrite of a region
    in practice, where hashing hundreds of GB on every `demix prepare` would not be acceptable."""
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(file, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while block := f.read(SAMPLE_BYTES):
                digest.update(block)
        else:
            for i in range(SAMPLES):
                f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def file_fingerprint(file: Path, previous: dict | None = None) -> dict:
    """Path, size, mtime and content hash of one source file. When size and mtime equal the `previous`
    record's, its hash is reused (as make and rsync trust them), so an unchanged dataset is not read again."""
    stat = os.stat(file)
    record = {"path": str(Path(file).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous and {k: previous.get(k) for k in record} == record and "hash" in previous:
        return {**record, "hash": previous["hash"]}
    return {**record, "hash": _content_hash(Path(file), stat.st_size)}


def source_fingerprint(dataset: DatasetConfig, path: Path, previous: list[dict] | None = None) -> list[dict]:
    """`file_fingerprint` of every file the dataset reads (`.bin` and `.idx` of an indexed dataset)."""
    files = ([Path(f"{path}.bin"), Path(f"{path}.idx")] if dataset_format(dataset, path) == "indexed"
             else source_files(dataset, path))
    before = {r.get("path"): r for r in previous or ()}
    return [file_fingerprint(f, before.get(str(f.resolve()))) for f in files]
