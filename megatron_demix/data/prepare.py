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
half-written dataset and re-running picks up where it stopped (removing what the killed run left).

A dataset counts as done only while everything its tokens depend on is unchanged: the source
files (path, size and content hash, see readers.source_fingerprint), the text field, the
end-of-document setting and the tokenizer. Any change re-tokenizes it and updates the prior.
A worker process that dies (killed, out of memory) ends the run with `PrepareFailed` naming the
dataset; nothing is left half-written.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path

import numpy as np

from megatron_demix.data import readers
from megatron_demix.data.builtin import write_builtin
from megatron_demix.data.config import DatasetConfig
from megatron_demix.data.readers import DataError
from megatron_demix.data.tokenizer import DemixTokenizer, load_tokenizer, train_bpe
from megatron_demix.data.builtin_tasks import write_builtin_tasks
from megatron_demix.runtime.errors import FAILED
from megatron_demix.runtime.files import TMP_SUFFIX, atomic_write_json, read_json, remove_stale_temporaries, temporary_name

PREPARE_AGAIN = "delete it and run demix prepare again"
log = logging.getLogger(__name__)


class PrepareFailed(RuntimeError):
    """Preparation failed while running (not because of the input): e.g. a tokenizer worker died."""
    exit_status = FAILED


def dataset_source(experiment, dataset: DatasetConfig) -> Path:
    """Where the dataset's text lives: the user's path, or the built-in corpus file in the work dir."""
    if dataset.builtin is None:
        return Path(dataset.path).expanduser()
    megabytes = experiment.prepare.builtin_megabytes
    return experiment.paths.corpora / f"{dataset.builtin}-{megabytes:g}MB.jsonl"


def write_builtin_corpora(experiment) -> None:
    for dataset in experiment.datasets:
        if dataset.builtin is not None:
            target = dataset_source(experiment, dataset)
            if not target.is_file():
                log.info("writing built-in corpus %s to %s", dataset.builtin, target)
                write_builtin(dataset.builtin, target, experiment.prepare.builtin_megabytes)


def _training_texts(experiment):
    """The first `train_megabytes` of each dataset's text, counted in text (not in the bytes of its container,
    compressed or not), so the same documents train the same tokenizer whatever format holds them."""
    budget = int(experiment.tokenizer.train_megabytes * 1_000_000)
    for dataset in experiment.datasets:
        path = dataset_source(experiment, dataset)
        if readers.dataset_format(dataset, path) == "indexed":
            continue
        used = 0
        for text, _ in readers.iter_documents(dataset, path):
            yield text
            used += len(text.encode("utf-8"))
            if used >= budget:
                break


def ensure_tokenizer(experiment) -> DemixTokenizer:
    """The experiment's tokenizer at `paths.tokenizer`: copied from tokenizer.path or trained once."""
    target = experiment.paths.tokenizer
    settings = experiment.tokenizer
    provenance = {"path": settings.path, "vocab_size": None if settings.path else settings.vocab_size,
                  "train_megabytes": None if settings.path else settings.train_megabytes}
    provenance_file = target.with_name("provenance.json")
    made_from = read_json(provenance_file, "what the tokenizer was made from", PREPARE_AGAIN) if provenance_file.is_file() else None
    if target.is_file() and made_from == provenance:
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
    if sys.platform == "linux":  # die with the parent: a kill -9 of `demix prepare` leaves no worker behind
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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


def _encode_in_order(pool: ProcessPoolExecutor, chunks, in_flight: int):
    """`pool.map(_encode_chunk, chunks)` in order with at most `in_flight` chunks read ahead (map would
    read the whole dataset first). Unlike multiprocessing.Pool, whose imap waits forever for the
    task of a worker that died, the executor fails every pending result with BrokenProcessPool."""
    pending = deque()
    for chunk in chunks:
        pending.append(pool.submit(_encode_chunk, chunk))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
    targets = {suffix: Path(f"{prefix}{suffix}") for suffix in (".bin", ".idx")}
    temporaries = {suffix: temporary_name(target) for suffix, target in targets.items()}
    for target in targets.values():
        remove_stale_temporaries(target)
    builder = IndexedDatasetBuilder(str(temporaries[".bin"]), dtype=DType.optimal_dtype(tokenizer.vocab_size))
    documents = tokens = 0
    bar = tqdm(total=readers.total_bytes(dataset, source), unit="B", unit_scale=True, desc=f"prepare {dataset.name}",
               mininterval=0.5 if sys.stderr.isatty() else 10, file=sys.stderr)
    try:
        # Workers are single-threaded so that --workers is the honest degree of parallelism.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        with ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _init_worker, (str(tokenizer.path), append_eod)) as pool:
            chunks = _chunks(readers.iter_documents(dataset, source), chunk_documents)
            for ids, lengths, size in _encode_in_order(pool, chunks, in_flight=4 * workers):
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                for i, length in enumerate(lengths):
                    builder.add_document(ids[offsets[i]:offsets[i + 1]], [int(length)])
                documents += len(lengths)
                tokens += int(offsets[-1])
                bar.update(size)
                bar.set_postfix(tokens=tokens, refresh=False)
        if documents == 0:
            raise DataError(f"{source}: dataset '{dataset.name}' has no documents (empty file or only empty texts)")
        builder.finalize(str(temporaries[".idx"]))
    except BaseException as error:
        builder.data_file.close()
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
        if isinstance(error, BrokenProcessPool):
            raise PrepareFailed(
                f"dataset '{dataset.name}' ({source}): a tokenizer worker process died (killed, or out of memory);"
                " nothing was written; run `demix prepare` again (with fewer --workers if memory is short)"
            ) from None
        raise
    finally:
        bar.close()
    for suffix, target in targets.items():
        os.replace(temporaries[suffix], target)
    return {"documents": documents, "tokens": tokens}


def _inputs(experiment, dataset: DatasetConfig, source: Path, tokenizer: DemixTokenizer,
            previous_files: list[dict] | None) -> dict:
    """Everything the prepared tokens depend on; recorded in token_count.json."""
    inputs = {"source": str(source), "files": readers.source_fingerprint(dataset, source, previous_files),
              "tokenizer": tokenizer.fingerprint(), "format": readers.dataset_format(dataset, source)}
    if inputs["format"] != "indexed":  # an indexed dataset is linked as it is: these do not apply
        inputs.update(text_field=dataset.text_field, append_eod=experiment.prepare.append_eod)
    return inputs


def _same_inputs(recorded: dict, current: dict) -> bool:
    """Equal but for where the files are and when they were modified: a touched but unchanged file, or a
    work_dir copied elsewhere (its built-in corpora with it), is still prepared."""
    def content(inputs: dict) -> dict:
        files = [{k: v for k, v in f.items() if k not in ("path", "mtime_ns")} for f in inputs.get("files", ())]
        return {**{k: v for k, v in inputs.items() if k != "source"}, "files": files}
    return content(recorded) == content(current)


def prepare_dataset(experiment, dataset: DatasetConfig, tokenizer: DemixTokenizer,
                    workers: int) -> dict:
    """Build (or find complete) the indexed dataset of one dataset; returns its token_count record."""
    paths = experiment.paths
    prefix, count_file = paths.dataset_prefix(dataset.name), paths.token_count(dataset.name)
    source = dataset_source(experiment, dataset)
    previous = read_json(count_file, "the dataset's token count and inputs", PREPARE_AGAIN) if count_file.is_file() else {}
    inputs = _inputs(experiment, dataset, source, tokenizer, previous.get("inputs", {}).get("files"))
    if previous and readers.is_indexed(prefix):
        if _same_inputs(previous.get("inputs", {}), inputs):
            log.info("%s: already prepared (%d tokens), skipping", dataset.name, previous["tokens"])
            return previous
        log.info("%s: its source, settings or tokenizer changed since it was prepared: preparing it again", dataset.name)
    count_file.unlink(missing_ok=True)
    # megatron-core (and torch with it) only when there is something to build: a complete preparation is
    # checked in well under a second. Imported before the clock starts: it takes seconds.
    import megatron.core.datasets.indexed_dataset  # noqa: F401
    start = time.perf_counter()
    if readers.dataset_format(dataset, source) == "indexed":
        counts = _link_indexed(source, prefix)
    else:
        counts = _tokenize_to_indexed(dataset, source, prefix, tokenizer, workers,
                                      experiment.prepare.chunk_documents, experiment.prepare.append_eod)
    seconds = time.perf_counter() - start
    record = {**counts, "inputs": inputs, "seconds": round(seconds, 3),
              "workers": workers, "tokens_per_second": round(counts["tokens"] / max(seconds, 1e-9))}
    atomic_write_json(count_file, record)
    log.info("%s: %d documents, %d tokens in %.1fs (%.0f tokens/s, %d workers)", dataset.name,
             counts["documents"], counts["tokens"], seconds, record["tokens_per_second"], workers)
    return record


def token_prior(experiment, counts: dict[str, dict]) -> dict[str, float]:
    """Each candidate's share of the candidates' tokens."""
    total = sum(counts[d.name]["tokens"] for d in experiment.candidates)
    return {d.name: counts[d.name]["tokens"] / total for d in experiment.candidates}


def prepare(experiment, workers: int | None = None) -> dict[str, dict]:
    """Run every preparation step (see the module docstring); returns the token counts per dataset."""
    workers = workers or experiment.prepare.workers
    write_builtin_corpora(experiment)
    tokenizer = ensure_tokenizer(experiment)
    counts = {d.name: prepare_dataset(experiment, d, tokenizer, workers) for d in experiment.datasets}
    atomic_write_json(experiment.paths.token_prior, token_prior(experiment, counts))
    write_builtin_tasks(experiment, tokenizer)  # lm-eval tasks from the held-out documents (data/builtin_tasks.py)
    return counts
