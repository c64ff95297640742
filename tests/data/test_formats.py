"""Corpora as they ship (issue 31): Parquet, compressed JSON lines, `save_to_disk` folders and glob patterns
prepare to the same bytes as plain JSONL; stale-data detection covers them; bad files are named with the fix.

    .venv/bin/python -m pytest -q -p no:cacheprovider -n 0 tests/data/test_formats.py

Every file is written by the library made for its format (pyarrow, zstandard, gzip, datasets).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_demix.data.config import DatasetConfig
from megatron_demix.data.prepare import prepare
from megatron_demix.data.readers import DataError, iter_documents
from megatron_demix.experiment import experiment_from_dict

WORDS = "beta gamma delta river stone light north cloud paper iron seven green naïve café — 数学 ∑".split()


def _documents(count: int, seed: int = 0, words: int = 40) -> list[str]:
    """Varied documents: non-ASCII, inner newlines, and an empty one (skipped by every reader alike)."""
    rng = random.Random(seed)
    texts = [f"document {i}\n" + " ".join(rng.choice(WORDS) for _ in range(words + i % 30)) for i in range(count)]
    texts[3] = ""
    return texts


def _jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()


def _zst(data: bytes) -> bytes:
    """Two frames, as `zstd` writes for concatenated or multi-threaded output."""
    half = len(data) // 2
    return zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])


def _table(texts: list[str]) -> pa.Table:
    """The text between two other columns, which the Parquet reader never reads."""
    return pa.table({"id": list(range(len(texts))), "text": texts, "url": [f"https://x/{i}" for i in range(len(texts))]})


def _parquet_shards(root: Path, texts: list[str]) -> Path:
    shards = root / "shards"
    shards.mkdir()
    third = len(texts) // 3
    for i, part in enumerate((texts[:third], texts[third:2 * third], texts[2 * third:])):
        pq.write_table(_table(part), shards / f"part-{i:05d}.parquet", row_group_size=50)
    return shards


def _saved(root: Path, texts: list[str]) -> Path:
    import datasets

    root.mkdir(exist_ok=True)
    datasets.Dataset.from_dict({"id": list(range(len(texts))), "text": texts}).save_to_disk(
        str(root / "saved"), num_shards=3)
    return root / "saved"


def _arrow_file(root: Path, texts: list[str]) -> Path:
    with pa.ipc.new_file(root / "docs.arrow", _table(texts).schema) as writer:
        writer.write_table(_table(texts), max_chunksize=64)
    return root / "docs.arrow"


def _mixed(root: Path, texts: list[str]) -> Path:
    """A directory of three containers (read in sorted order) and a README that is not data."""
    mixed = root / "mixed"
    mixed.mkdir()
    third = len(texts) // 3
    _written(mixed / "a.jsonl.zst", _zst(_jsonl_bytes(texts[:third])))
    pq.write_table(_table(texts[third:2 * third]), mixed / "b.parquet", row_group_size=40)
    _saved(mixed / "c", texts[2 * third:])
    (mixed / "README.md").write_text("# three shards\n")
    return mixed


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


WRITERS = {
    "plain": lambda root, texts: _written(root / "plain.jsonl", _jsonl_bytes(texts)),
    "jsonl_gz": lambda root, texts: _written(root / "docs.jsonl.gz", gzip.compress(_jsonl_bytes(texts))),
    "json_gz": lambda root, texts: _written(root / "docs.json.gz", gzip.compress(_jsonl_bytes(texts))),
    "jsonl_zst": lambda root, texts: _written(root / "docs.jsonl.zst", _zst(_jsonl_bytes(texts))),
    "json_zst": lambda root, texts: _written(root / "docs.json.zst", _zst(_jsonl_bytes(texts))),
    "parquet": lambda root, texts: pq.write_table(_table(texts), root / "docs.parquet", row_group_size=97)
    or root / "docs.parquet",
    "parquet_dir": _parquet_shards,
    "parquet_glob": lambda root, texts: _parquet_shards(root / "glob", texts) / "part-*.parquet",
    "saved": _saved,
    "arrow_file": _arrow_file,
    "mixed_dir": _mixed,
}
"""The same documents in the same order in every container `datasets[].path` accepts."""


def write_formats(root: Path, texts: list[str], kinds=tuple(WRITERS)) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "glob").mkdir()
    return {kind: WRITERS[kind](root, texts) for kind in kinds}


def _experiment(tmp_path: Path, datasets: list[dict], **sections):
    config = {"name": "formats", "work_dir": str(tmp_path / "work"), "datasets": datasets,
              "tokenizer": {"vocab_size": 512, "train_megabytes": 0.05}, "model": {"preset": "tiny"},
              "prepare": {"workers": 2, "chunk_documents": 16, **sections.pop("prepare", {})}, **sections}
    return experiment_from_dict(config, "test")


def test_every_container_prepares_byte_identical_bin_and_idx(tmp_path):
    """One experiment, one trained tokenizer: the plain JSONL is the general data, each other format a candidate."""
    texts = _documents(600)
    sources = write_formats(tmp_path / "src", texts)
    datasets = [{"name": name, "role": "general" if name == "plain" else "candidate", "path": str(path)}
                for name, path in sources.items()]
    experiment = _experiment(tmp_path, datasets)
    counts = prepare(experiment)

    reference = {suffix: Path(f"{experiment.paths.dataset_prefix('plain')}{suffix}").read_bytes()
                 for suffix in (".bin", ".idx")}
    assert counts["plain"]["documents"] == len(texts) - 1  # the empty document is skipped
    for name in sources:
        for suffix, expected in reference.items():
            produced = Path(f"{experiment.paths.dataset_prefix(name)}{suffix}").read_bytes()
            assert produced == expected, f"{name}{suffix} differs from the plain JSONL's"
        assert counts[name]["tokens"] == counts["plain"]["tokens"]
    recorded = {name: json.loads(experiment.paths.token_count(name).read_text())["inputs"] for name in sources}
    assert recorded["parquet"]["format"] == "parquet" and recorded["saved"]["format"] == "auto"
    assert [Path(f["path"]).name for f in recorded["saved"]["files"]] == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)]
    assert len(recorded["parquet_glob"]["files"]) == 3


def _two_datasets(tmp_path: Path, path: Path):
    general = tmp_path / "general.jsonl"
    general.write_bytes(_jsonl_bytes(_documents(300, seed=1)))
    return _experiment(tmp_path, [{"name": "general", "role": "general", "path": str(general)},
                                  {"name": "user", "path": str(path)}], prepare={"workers": 1})


def test_a_changed_added_or_removed_parquet_shard_is_prepared_again(tmp_path):
    texts = _documents(300)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        pq.write_table(_table(texts[i * 100:(i + 1) * 100]), shards / f"part-{i}.parquet", row_group_size=30)
    experiment = _two_datasets(tmp_path, shards / "*.parquet")
    bin_file = Path(f"{experiment.paths.dataset_prefix('user')}.bin")

    first = prepare(experiment)["user"]
    stamp = os.stat(bin_file).st_mtime_ns
    assert prepare(experiment)["user"] == first and os.stat(bin_file).st_mtime_ns == stamp  # unchanged: skipped

    changed = texts[100:200]
    changed[50] = changed[50].replace("document", "chapter")  # one word of one document in the middle shard
    pq.write_table(_table(changed), shards / "part-1.parquet", row_group_size=30)
    second = prepare(experiment)["user"]
    assert os.stat(bin_file).st_mtime_ns != stamp and second["inputs"]["files"] != first["inputs"]["files"]
    assert second["documents"] == first["documents"]

    added = _documents(40, seed=7)
    pq.write_table(_table(added), shards / "part-3.parquet")  # a new shard the pattern matches
    third = prepare(experiment)["user"]
    assert third["documents"] == second["documents"] + len([t for t in added if t])
    (shards / "part-3.parquet").unlink()
    assert prepare(experiment)["user"]["documents"] == second["documents"]


def _dataset(**fields) -> DatasetConfig:
    return DatasetConfig(name="user", path="unused", **fields)


def _read(path: Path, **fields) -> list[str]:
    return [text for text, _ in iter_documents(_dataset(**fields), path)]


def _corrupt(data: bytes, at: int, length: int = 64) -> bytes:
    return data[:at] + bytes(b ^ 0x5A for b in data[at:at + length]) + data[at + length:]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return write_formats(tmp_path_factory.mktemp("formats"), _documents(600))


def test_missing_column_lists_the_columns_there_are(sources):
    for name in ("parquet", "saved", "arrow_file"):
        with pytest.raises(DataError, match=re.escape("no column 'body' (columns: id, text")) as error:
            _read(sources[name], text_field="body")
        assert "set text_field of dataset 'user'" in str(error.value)
    with pytest.raises(DataError, match=r"docs\.jsonl\.zst:1: no field 'body' \(fields: id, text\)"):
        _read(sources["jsonl_zst"], text_field="body")
    with pytest.raises(DataError, match=re.escape("docs.parquet: column 'id' holds int64, expected strings")):
        _read(sources["parquet"], text_field="id")


def test_null_text_names_row_group_and_row(tmp_path):
    texts = _documents(200)
    table = _table(texts).set_column(1, "text", pa.array(texts[:150] + [None] + texts[151:], pa.string()))
    pq.write_table(table, tmp_path / "nulls.parquet", row_group_size=60)
    with pytest.raises(DataError, match=r"nulls\.parquet: row group 2 \(column 'text' at byte offset \d+\), row 30:"
                                        r" column 'text' is null; drop or fill such rows"):
        _read(tmp_path / "nulls.parquet")


def test_corrupt_and_truncated_files_are_named_with_the_offset(sources, tmp_path):
    parquet = sources["parquet"].read_bytes()
    chunk = pq.ParquetFile(sources["parquet"]).metadata.row_group(3).column(1)  # row group 3's text column
    offset = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    (tmp_path / "corrupt.parquet").write_bytes(_corrupt(parquet, offset, 16))  # its first page header
    (tmp_path / "cut.parquet").write_bytes(parquet[:len(parquet) // 2])
    zst = sources["jsonl_zst"].read_bytes()
    (tmp_path / "cut.jsonl.zst").write_bytes(zst[:len(zst) - 200])
    (tmp_path / "corrupt.jsonl.zst").write_bytes(_corrupt(zst, len(zst) // 3))
    (tmp_path / "cut.jsonl.gz").write_bytes(sources["jsonl_gz"].read_bytes()[:-200])
    (tmp_path / "noise.arrow").write_bytes(os.urandom(4096))
    expected = {
        "corrupt.parquet": rf"corrupt\.parquet: row group 3 \(column 'text' at byte offset {offset}\): cannot read it",
        "cut.parquet": r"cut\.parquet: not a readable Parquet file \(.*\); the file is corrupt or truncated",
        "cut.jsonl.zst": r"cut\.jsonl\.zst: unreadable data after \d+ lines, at or before byte offset \d+ \(EOFError: the file ends inside a zstd frame",
        "corrupt.jsonl.zst": r"corrupt\.jsonl\.zst: unreadable data after \d+ lines, at or before byte offset \d+ \(ZstdError",
        "cut.jsonl.gz": r"cut\.jsonl\.gz: unreadable data after \d+ lines, at or before byte offset \d+ \(EOFError",
        "noise.arrow": r"noise\.arrow: not an Arrow IPC file",
    }
    for name, message in expected.items():
        with pytest.raises(DataError, match=message) as error:
            _read(tmp_path / name)
            pytest.fail(f"{name} was read without an error")
        assert "fetch or" in str(error.value), str(error.value)


def test_folders_and_patterns_that_cannot_be_read_say_what_to_point_at(sources, tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b"]}),
                                   "test": datasets.Dataset.from_dict({"text": ["c d"]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=re.escape(f"a DatasetDict saved with save_to_disk (splits: train, test); set"
                                                  f" datasets[].path of 'user' to one split's folder, e.g. {tmp_path / 'dict' / 'train'}")):
        _read(tmp_path / "dict")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/none/*.parquet: the pattern of dataset 'user' matches no data files")):
        _read(tmp_path / "none" / "*.parquet")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("about the shards")
    with pytest.raises(DataError, match="notes/\\*: the pattern of dataset 'user' matches no data files"):
        _read(tmp_path / "notes" / "*")
    assert _read(tmp_path / "notes" / "*", format="text") == ["about the shards"]
    (tmp_path / "mystery.bin.zst").write_bytes(sources["jsonl_zst"].read_bytes())
    with pytest.raises(DataError, match=r"mystery\.bin\.zst: not UTF-8 text .* a suffix that says its format"):
        _read(tmp_path / "mystery.bin.zst")


def test_a_bad_shard_fails_prepare_and_leaves_nothing(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(_table(_documents(100)), shards / "a.parquet")
    pq.write_table(pa.table({"body": ["x y"]}), shards / "b.parquet")
    experiment = _two_datasets(tmp_path, shards)
    with pytest.raises(DataError, match=re.escape(f"{shards / 'b.parquet'}: no column 'text' (columns: body)")):
        prepare(experiment)
    assert not (experiment.paths.data / "user").exists() or not any((experiment.paths.data / "user").iterdir())
    assert not experiment.paths.token_prior.exists()


def _peak_bytes(path: Path) -> int:
    """Peak of Python's and Arrow's allocations while reading every document of `path`."""
    tracemalloc.start()
    arrow_peak = 0
    try:
        for _ in iter_documents(_dataset(), path):
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        return tracemalloc.get_traced_memory()[1] + arrow_peak
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["parquet", "jsonl_zst", "saved"])
def test_memory_while_reading_does_not_grow_with_the_file(tmp_path, kind):
    """About 1 and 8 MB of text (distinct documents: a repeat inside zstd's window would compress far better
    than text does): the reader's peak memory stays put."""
    small = write_formats(tmp_path / "small", _documents(1500, seed=1, words=100), [kind])[kind]
    texts = _documents(12000, seed=2, words=100)
    large = write_formats(tmp_path / "large", texts, [kind])[kind]
    text_bytes = sum(len(t.encode()) for t in texts)
    small_peak, large_peak = _peak_bytes(small), _peak_bytes(large)
    assert large_peak < 1.3 * small_peak + (1 << 20), (small_peak, large_peak)
    assert large_peak < text_bytes / 2, (large_peak, text_bytes)


def test_parquet_columns_other_than_the_text_are_never_read(sources, tmp_path):
    """Another column's pages corrupted: reading the whole table fails, reading the documents does not."""
    parquet = sources["parquet"].read_bytes()
    metadata = pq.ParquetFile(sources["parquet"]).metadata
    for group in range(metadata.num_row_groups):
        url = metadata.row_group(group).column(2)
        parquet = _corrupt(parquet, url.dictionary_page_offset if url.has_dictionary_page else url.data_page_offset, 16)
    (tmp_path / "bad_urls.parquet").write_bytes(parquet)
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(tmp_path / "bad_urls.parquet")
    assert _read(tmp_path / "bad_urls.parquet") == _read(sources["plain"])
