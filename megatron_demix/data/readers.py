"""Read documents from a dataset's files, with errors that say where (file:line, row group, offset) and the fix.

`datasets[].path` may be (DatasetConfig.format `auto` decides by suffix):
- JSON lines (`.jsonl`, `.json`), plain or compressed (`.jsonl.gz`, `.jsonl.zst`, `.json.gz`, `.json.zst`,
  decompressed as a stream); the text is in `text_field`;
- Parquet (`.parquet`): only the `text_field` column is read, one row group at a time;
- a folder written by `datasets.Dataset.save_to_disk`: its Arrow files, in the order of its state.json
  (and any `.arrow` file, IPC stream or file format);
- a text file (`.txt`, or any other suffix): one document;
- a directory: every file of these kinds in it, recursively, in sorted order;
- a glob pattern (`shards/*.parquet`, `data/**/*.jsonl.zst`): its matches in sorted order, each as above;
- `indexed`: an already-built Megatron dataset prefix (`<prefix>.bin` + `<prefix>.idx`); it is
  used as it is, never re-tokenized, so it has no documents to read here.
`format: jsonl` or `format: text` reads every file that way (compression still by suffix).

Whatever the container, the same documents in the same order give the same text, so the prepared
`.bin/.idx` are byte-identical. A reader holds one line, one Parquet batch of its row group's text
column, or one Arrow record batch in memory at a time, whatever the size of the file.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_demix.data.config import DatasetConfig
from megatron_demix.runtime.errors import BAD_INPUT

KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl", ".json.gz": "jsonl",
         ".json.zst": "jsonl", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
"""File name endings a directory or pattern is read for, and how each is read."""
GLOB_CHARS = "*?["
READ_BYTES = 1 << 17
"""The line buffer over decompressed bytes."""
ZSTD_FEED_BYTES = 1 << 14
"""Compressed bytes decompressed at a time: what one call returns is at most the compression ratio times this
(text compresses 3-10x; zstandard's decompressobj cannot cap its output), and an error's offset is this precise."""
BATCH_ROWS = 1024
"""Parquet rows turned into Python strings at a time (a row group can hold hundreds of MB)."""


class DataError(ValueError):
    exit_status = BAD_INPUT


def is_indexed(path: Path) -> bool:
    return Path(f"{path}.bin").is_file() and Path(f"{path}.idx").is_file()


def file_kind(file: Path) -> str | None:
    """`jsonl`, `parquet`, `arrow` or `text` by the name's ending; None for a file a directory skips."""
    return next((kind for ending, kind in KINDS.items() if file.name.endswith(ending)), None)


def dataset_format(dataset: DatasetConfig, path: Path) -> str:
    """`indexed`, the configured format, or how a single file is read; `auto` for a directory or pattern
    (each file by its suffix)."""
    if dataset.format != "auto":
        return dataset.format
    if is_indexed(path):
        return "indexed"
    if path.is_dir() or (_is_pattern(path) and not path.exists()):
        return "auto"
    return file_kind(path) or "text"


def _is_pattern(path: Path) -> bool:
    return any(c in str(path) for c in GLOB_CHARS)


def _saved_dataset_files(dataset: DatasetConfig, folder: Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` folder, in the dataset's row order (its state.json)."""
    state_file = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state_file.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{state_file}: not a `save_to_disk` state file ({type(error).__name__}: {error});"
                        f" save dataset '{dataset.name}' again with datasets' save_to_disk") from None
    files = [folder / name for name in names]
    if missing := [str(f) for f in files if not f.is_file()]:
        raise DataError(f"{folder}: the Arrow files {', '.join(missing)} named in its state.json are missing;"
                        f" copy the whole folder of dataset '{dataset.name}' again")
    return files


def _directory_files(dataset: DatasetConfig, directory: Path) -> list[Path]:
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits") or ["<split>"]
        raise DataError(f"{directory}: a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}); set"
                        f" datasets[].path of '{dataset.name}' to one split's folder, e.g. {directory / splits[0]}")
    if (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file():
        return _saved_dataset_files(dataset, directory)
    files = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            files += _directory_files(dataset, entry)
        elif file_kind(entry):
            files.append(entry)
    return files


def source_files(dataset: DatasetConfig, path: Path) -> list[Path]:
    """The files of a dataset that is not `indexed`: the file, a directory's data files, a pattern's matches."""
    if _is_pattern(path) and not path.exists():
        # As in a directory, `auto` skips files of no known kind (a README next to the shards).
        matches = [m for m in sorted(Path(m) for m in glob.glob(str(path), recursive=True))
                   if m.is_dir() or dataset.format != "auto" or file_kind(m)]
        files = list(dict.fromkeys(f for m in matches for f in (_directory_files(dataset, m) if m.is_dir() else [m])))
        if not files:
            raise DataError(f"{path}: the pattern of dataset '{dataset.name}' matches no data files"
                            f" ({', '.join(KINDS)} or a save_to_disk folder); fix datasets[].path")
        return files
    if path.is_dir():
        if not (files := _directory_files(dataset, path)):
            raise DataError(f"{path}: directory of dataset '{dataset.name}' holds no data files"
                            f" ({', '.join(KINDS)} or a save_to_disk folder)")
        return files
    if not path.is_file():
        raise DataError(
            f"{path}: dataset '{dataset.name}' not found; fix datasets[].path in the experiment file (a .jsonl,"
            " .jsonl.gz/.zst, .parquet or .txt file, a directory or glob pattern of them, a save_to_disk folder,"
            " or a Megatron .bin/.idx prefix)"
        )
    return [path]


# ----------------------------------------------------------------------------- JSON lines, plain or compressed
class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame. zstandard's own stream_reader ends quietly
    where a truncated file ends; this raises, so a cut-off download is not taken for a shorter dataset."""

    def __init__(self, raw):
        import zstandard

        self._raw, self._new_frame = raw, zstandard.ZstdDecompressor().decompressobj
        self._frame, self._in_frame = self._new_frame(), False
        self._pending, self._offset = b"", 0

    def readable(self) -> bool:
        return True

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if self._in_frame:
                break
            data, self._frame = self._frame.unused_data, self._new_frame()
        return b"".join(out)

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending):
            compressed = self._raw.read(ZSTD_FEED_BYTES)
            if not compressed:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            self._pending, self._offset = self._decompress(compressed), 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = memoryview(self._pending)[self._offset:self._offset + n]
        self._offset += n
        return n


@contextmanager
def _decompressed(file: Path):
    """(lines to read, the raw file): the raw file's position is the compressed offset, for progress and errors."""
    with open(file, "rb") as raw:
        if file.name.endswith(".gz"):
            yield gzip.GzipFile(fileobj=raw, mode="rb"), raw
        elif file.name.endswith(".zst"):
            yield io.BufferedReader(_ZstdFrames(raw), READ_BYTES), raw
        else:
            yield raw, raw


def _decompression_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return OSError, EOFError, zlib.error, zstandard.ZstdError  # OSError: gzip.BadGzipFile


def _jsonl_documents(dataset: DatasetConfig, file: Path) -> Iterator[tuple[str, int]]:
    number, consumed = 0, 0
    with _decompressed(file) as (lines, raw):
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                text = _jsonl_text(dataset, f"{file}:{number}", line)
                if text:
                    position = raw.tell()
                    yield text, position - consumed
                    consumed = position
        except _decompression_errors() as error:
            raise DataError(f"{file}: unreadable data after {number} lines, at or before byte offset {raw.tell()}"
                            f" ({type(error).__name__}: {error}); the file is corrupt or truncated:"
                            " fetch or compress it again") from None


def _jsonl_text(dataset: DatasetConfig, where: str, line: bytes) -> str:
    try:
        record = json.loads(line)
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
    return text


# ----------------------------------------------------------------------------- Parquet and Arrow
def _check_text_column(dataset: DatasetConfig, where: str, schema) -> None:
    import pyarrow as pa

    field = dataset.text_field
    if field not in schema.names:
        raise DataError(f"{where}: no column '{field}' (columns: {', '.join(schema.names) or 'none'});"
                        f" set text_field of dataset '{dataset.name}'")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataError(f"{where}: column '{field}' holds {kind}, expected strings;"
                        f" set text_field of dataset '{dataset.name}' to the text column")


def _batch_texts(dataset: DatasetConfig, where: str, column, first_row: int, size: int) -> Iterator[tuple[str, int]]:
    """The non-empty texts of one batch; the first carries the batch's `size` in bytes (for progress)."""
    for row, text in enumerate(column.to_pylist(), start=first_row):
        if text is None:
            raise DataError(f"{where}, row {row}: column '{dataset.text_field}' is null; drop or fill such rows")
        if text:
            yield text, size
            size = 0


def _parquet_documents(dataset: DatasetConfig, file: Path) -> Iterator[tuple[str, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{file}: not a readable Parquet file ({error}); the file is corrupt or truncated:"
                        " fetch or write it again") from None
    with parquet:
        yield from _parquet_row_groups(dataset, file, parquet)


def _parquet_row_groups(dataset: DatasetConfig, file: Path, parquet) -> Iterator[tuple[str, int]]:
    import pyarrow as pa

    _check_text_column(dataset, str(file), parquet.schema_arrow)
    metadata, file_size = parquet.metadata, file.stat().st_size
    for group in range(parquet.num_row_groups):
        chunks = metadata.row_group(group)
        chunk = next(chunks.column(i) for i in range(chunks.num_columns)
                     if chunks.column(i).path_in_schema == dataset.text_field)
        offset = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        where, first_row = f"{file}: row group {group} (column '{dataset.text_field}' at byte offset {offset})", 0
        try:
            for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=[dataset.text_field]):
                size = file_size * batch.num_rows // max(metadata.num_rows, 1)
                yield from _batch_texts(dataset, where, batch.column(0), first_row, size)
                first_row += batch.num_rows
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{where}: cannot read it ({error}); the file is corrupt or truncated:"
                            " fetch or write it again") from None


def _arrow_documents(dataset: DatasetConfig, file: Path) -> Iterator[tuple[str, int]]:
    """An Arrow IPC file: the stream format `save_to_disk` writes, or the random-access file format. Read
    through a plain file (no memory map), so memory holds one record batch, not the pages of the whole file."""
    import pyarrow as pa

    with pa.OSFile(str(file)) as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches, shares = iter(reader), None
        except (pa.ArrowException, OSError):
            source.seek(0)
            try:
                reader = pa.ipc.open_file(source)
            except (pa.ArrowException, OSError) as error:
                raise DataError(f"{file}: not an Arrow IPC file ({error}); the file is corrupt or truncated:"
                                " fetch or save it again") from None
            shares = reader.num_record_batches
            batches = (reader.get_batch(i) for i in range(shares))
        _check_text_column(dataset, str(file), reader.schema)
        index, consumed, file_size = reader.schema.get_field_index(dataset.text_field), 0, file.stat().st_size
        for number in itertools.count():
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as error:
                raise DataError(f"{file}: record batch {number}, near byte offset {source.tell()}: cannot read it"
                                f" ({error}); the file is corrupt or truncated: fetch or save it again") from None
            if batch is None:
                return
            # The file format reads by offset, leaving the position: each batch counts as an equal share.
            position = source.tell() if shares is None else file_size * (number + 1) // shares
            yield from _batch_texts(dataset, f"{file}: record batch {number}", batch.column(index), 0, position - consumed)
            consumed = position


# ----------------------------------------------------------------------------- any dataset
def _text_documents(dataset: DatasetConfig, file: Path) -> Iterator[tuple[str, int]]:
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{file}: not UTF-8 text ({error}); a compressed or binary file needs a suffix"
                        f" that says its format ({', '.join(KINDS)})") from None
    if text.strip():
        yield text, len(raw)


READERS = {"jsonl": _jsonl_documents, "parquet": _parquet_documents, "arrow": _arrow_documents, "text": _text_documents}


def iter_documents(dataset: DatasetConfig, path: Path) -> Iterator[tuple[str, int]]:
    """Yield (document text, bytes of the source read for it) for every non-empty document of the dataset."""
    fmt = dataset_format(dataset, path)
    if fmt == "indexed":
        raise DataError(f"{path}: dataset '{dataset.name}' is an indexed dataset; it has no text to read")
    for file in source_files(dataset, path):
        kind = fmt if dataset.format != "auto" else file_kind(file) or "text"
        yield from READERS[kind](dataset, file)


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
    """`file_fingerprint` of every file the dataset reads (`.bin` and `.idx` of an indexed dataset; the Parquet,
    Arrow or compressed files themselves, so a changed, added or removed shard is noticed)."""
    files = ([Path(f"{path}.bin"), Path(f"{path}.idx")] if dataset_format(dataset, path) == "indexed"
             else source_files(dataset, path))
    before = {r.get("path"): r for r in previous or ()}
    return [file_fingerprint(f, before.get(str(f.resolve()))) for f in files]
