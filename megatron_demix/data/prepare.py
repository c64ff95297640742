"""`demix prepare`: tokenize every dataset of an experiment into a Megatron indexed dataset.

    demix prepare --config configs/demo.yaml [--workers 2]

Steps, each skipped when its output is already complete:
1. write the built-in corpora the experiment names as JSONL under `<work_dir>/corpora/`;
2. the tokenizer: copy `tokenizer.path`, or train a byte-level BPE on the datasets;
3. per dataset, tokenize in worker processes (documents in order, end-of-document token
   appended) into `<work_dir>/data/<name>/<name>.bin/.idx` with megatron-core's
   IndexedDatasetBuilder; an already-built `.bin/.idx` dataset is linked, not re-tokenized;
   `token_count.json` is written last and marks the dataset complete;
4. `token_prior.json`: the candidates' token shares (the search's "Uniform" baseline).
Outputs are written under temporary names and renamed when complete, so a killed run leaves no
half-written dataset and re-running picks up where it stopped.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from megatron_demix.config.experiment import ExperimentConfig
from megatron_demix.data import readers
from megatron_demix.data.builtin import write_builtin
from megatron_demix.data.config import DatasetConfig
from megatron_demix.data.readers import DataError
from megatron_demix.data.tokenizer import DemixTokenizer, load_tokenizer, train_bpe
from megatron_demix.runtime.files import TMP_SUFFIX, atomic_write_json, remove_stale_temporaries

log = logging.getLogger(__name__)


def dataset_source(experiment: ExperimentConfig, dataset: DatasetConfig) -> Path:
    """Where the dataset's text lives: the user's path, or the built-in corpus file in the work dir."""
    if dataset.builtin is None:
        return Path(dataset.path).expanduser()
    megabytes = experiment.prepare.builtin_megabytes
    return experiment.paths.corpora / f"{dataset.builtin}-{megabytes:g}MB.jsonl"


def write_builtin_corpora(experiment: ExperimentConfig) -> None:
    for dataset in experiment.datasets:
        if dataset.builtin is not None:
            target = dataset_source(experiment, dataset)
            if not target.is_file():
                log.info("writing built-in corpus %s to %s", dataset.builtin, target)
                write_builtin(dataset.builtin, target, experiment.prepare.builtin_megabytes)


def _training_texts(experiment: ExperimentConfig):
    budget = int(experiment.tokenizer.train_megabytes * 1_000_000)
    for dataset in experiment.datasets:
        path = dataset_source(experiment, dataset)
        if readers.dataset_format(dataset, path) == "indexed":
            continue
        used = 0
        for text, size in readers.iter_documents(dataset, path):
            yield text
            used += size
            if used >= budget:
                break


def ensure_tokenizer(experiment: ExperimentConfig) -> DemixTokenizer:
    """The experiment's tokenizer at `paths.tokenizer`: copied from tokenizer.path or trained once."""
    target = experiment.paths.tokenizer
    settings = experiment.tokenizer
    provenance = {"path": settings.path, "vocab_size": None if settings.path else settings.vocab_size,
                  "train_megabytes": None if settings.path else settings.train_megabytes}
    provenance_file = target.with_name("provenance.json")
    if target.is_file() and provenance_file.is_file() and json.loads(provenance_file.read_text()) == provenance:
        return load_tokenizer(target)
    if settings.path:
        source = load_tokenizer(settings.path)  # validates before copying
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path, target.with_name(target.name + TMP_SUFFIX))
        os.replace(target.with_name(target.name + TMP_SUFFIX), target)
        tokenizer = load_tokenizer(target)
    else:
        if all(readers.dataset_format(d, dataset_source(experiment, d)) == "indexed" for d in experiment.datasets):
            raise DataError("every dataset is an indexed .bin/.idx dataset, so there is no text to train a tokenizer on:"
                            " set tokenizer.path to the tokenizer.json the datasets were built with")
        log.info("training a byte-level BPE tokenizer (vocab %d) on the datasets", settings.vocab_size)
        tokenizer = train_bpe(_training_texts(experiment), settings.vocab_size, target)
    atomic_write_json(provenance_file, provenance)
    return tokenizer


# ----------------------------------------------------------------------------- worker processes
_worker_tokenizer: DemixTokenizer | None = None
_worker_append_eod = True


def _init_worker(tokenizer_path: str, append_eod: bool) -> None:
    global _worker_tokenizer, _worker_append_eod
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    _worker_append_eod = append_eod


def _encode_chunk(chunk: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids of a chunk of documents, concatenated, the length of each document, and the bytes read."""
    texts, size = chunk
    ids = _worker_tokenizer.tokenize_batch(texts)
    if _worker_append_eod:
        for doc in ids:
            doc.append(_worker_tokenizer.eod)
    lengths = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids))
    return np.fromiter((t for d in ids for t in d), dtype=np.int32, count=int(lengths.sum())), lengths, size


def _chunks(documents, size: int):
    """Lists of `size` texts, with the bytes they took to read."""
    documents = iter(documents)
    while chunk := list(islice(documents, size)):
        yield [text for text, _ in chunk], sum(n for _, n in chunk)


# ----------------------------------------------------------------------------- one dataset
def _link_indexed(source: Path, prefix: Path) -> dict:
    """Use an existing .bin/.idx dataset as it is: symlink it into the work dir and count its tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".idx"):
        link = Path(f"{prefix}{suffix}")
        tmp = link.with_name(link.name + TMP_SUFFIX)
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(f"{source}{suffix}").resolve())
        os.replace(tmp, link)
    index = IndexedDataset(str(prefix))
    return {"documents": len(index.document_indices) - 1, "tokens": int(index.sequence_lengths.sum())}


def _tokenize_to_indexed(dataset: DatasetConfig, source: Path, prefix: Path, tokenizer: DemixTokenizer,
                         workers: int, chunk_documents: int, append_eod: bool) -> dict:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from tqdm import tqdm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(Path(f"{prefix}.bin"))
    tmp_prefix = prefix.with_name(f".{prefix.name}.{os.getpid()}{TMP_SUFFIX}")
    builder = IndexedDatasetBuilder(f"{tmp_prefix}.bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
    documents = tokens = 0
    bar = tqdm(total=readers.total_bytes(dataset, source), unit="B", unit_scale=True, desc=f"prepare {dataset.name}",
               mininterval=0.5 if sys.stderr.isatty() else 10, file=sys.stderr)
    try:
        # Workers are single-threaded so that --workers is the honest degree of parallelism.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        with multiprocessing.get_context("fork").Pool(workers, _init_worker, (str(tokenizer.path), append_eod)) as pool:
            chunks = _chunks(readers.iter_documents(dataset, source), chunk_documents)
            for ids, lengths, size in pool.imap(_encode_chunk, chunks):
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                for i, length in enumerate(lengths):
                    builder.add_document(ids[offsets[i]:offsets[i + 1]], [int(length)])
                documents += len(lengths)
                tokens += int(offsets[-1])
                bar.update(size)
                bar.set_postfix(tokens=tokens, refresh=False)
        if documents == 0:
            raise DataError(f"{source}: dataset '{dataset.name}' has no documents (empty file or only empty texts)")
        builder.finalize(f"{tmp_prefix}.idx")
    except BaseException:
        builder.data_file.close()
        for suffix in (".bin", ".idx"):
            Path(f"{tmp_prefix}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(f"{tmp_prefix}.bin", f"{prefix}.bin")
    os.replace(f"{tmp_prefix}.idx", f"{prefix}.idx")
    return {"documents": documents, "tokens": tokens}


def prepare_dataset(experiment: ExperimentConfig, dataset: DatasetConfig, tokenizer: DemixTokenizer,
                    workers: int) -> dict:
    """Build (or find complete) the indexed dataset of one dataset; returns its token_count record."""
    paths = experiment.paths
    prefix, count_file = paths.dataset_prefix(dataset.name), paths.token_count(dataset.name)
    source = dataset_source(experiment, dataset)
    fingerprint = tokenizer.fingerprint()
    if count_file.is_file() and readers.is_indexed(prefix):
        record = json.loads(count_file.read_text())
        if record.get("tokenizer") == fingerprint and record.get("source") == str(source):
            log.info("%s: already prepared (%d tokens), skipping", dataset.name, record["tokens"])
            return record
    count_file.unlink(missing_ok=True)
    start = time.perf_counter()
    if readers.dataset_format(dataset, source) == "indexed":
        counts = _link_indexed(source, prefix)
    else:
        counts = _tokenize_to_indexed(dataset, source, prefix, tokenizer, workers,
                                      experiment.prepare.chunk_documents, experiment.prepare.append_eod)
    seconds = time.perf_counter() - start
    record = {**counts, "tokenizer": fingerprint, "source": str(source), "seconds": round(seconds, 3),
              "workers": workers, "tokens_per_second": round(counts["tokens"] / max(seconds, 1e-9))}
    atomic_write_json(count_file, record)
    log.info("%s: %d documents, %d tokens in %.1fs (%.0f tokens/s, %d workers)", dataset.name,
             counts["documents"], counts["tokens"], seconds, record["tokens_per_second"], workers)
    return record


def token_prior(experiment: ExperimentConfig, counts: dict[str, dict]) -> dict[str, float]:
    """Each candidate's share of the candidates' tokens."""
    total = sum(counts[d.name]["tokens"] for d in experiment.candidates)
    return {d.name: counts[d.name]["tokens"] / total for d in experiment.candidates}


def prepare(experiment: ExperimentConfig, workers: int | None = None) -> dict[str, dict]:
    """Run every preparation step (see the module docstring); returns the token counts per dataset."""
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (slow first import; keep it out of the timings)

    workers = workers or experiment.prepare.workers
    write_builtin_corpora(experiment)
    tokenizer = ensure_tokenizer(experiment)
    counts = {d.name: prepare_dataset(experiment, d, tokenizer, workers) for d in experiment.datasets}
    atomic_write_json(experiment.paths.token_prior, token_prior(experiment, counts))
    return counts
