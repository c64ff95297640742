"""Preparation throughput: tokens/s with 1 and 2 tokenizer workers, or per container format, side by side in one run.

    .venv/bin/python benchmarks/prepare_bench.py [--megabytes 8] [--workers 1 2]
    .venv/bin/python benchmarks/prepare_bench.py --formats --megabytes 100 --workers 2
    .venv/bin/python benchmarks/prepare_bench.py --formats --megabytes 20 --workers 2 --megatron-lm /tmp/megatron-lm

Without --formats: tokenizes the built-in corpora (best of --repeat runs) (a trained 4096-token BPE) into Megatron
indexed datasets from scratch for each worker count and prints tokens/s per dataset, and the ratio to 1 worker.

With --formats: the same --megabytes of documents as plain JSONL, Parquet (8 row groups, two more columns),
.jsonl.zst and a `datasets` save_to_disk folder, each prepared in a fresh process (best of --repeat, interleaved):
time, tokens/s against plain JSONL, and the peak memory of the reading process and of its tokenizer workers
above the process's memory before the run (megatron-core and torch imported), from getrusage.

With --megatron-lm DIR (a Megatron-LM checkout; its tools/ is not in the megatron-core wheel): in the same run,
interleaved, the `demix prepare` command and DIR/tools/preprocess_data.py on the plain JSONL, as whole processes
with the same tokenizer, workers and end of document: wall and CPU time, the same on one document (startup),
peak memory of each command's process tree, and whether their `.bin/.idx` are byte-identical. The tool runs on the installed megatron-core and
megatron.training (the wheel ships both), so both commands write with the same IndexedDatasetBuilder.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from megatron_demix.experiment import experiment_from_dict
from megatron_demix.data.prepare import ensure_tokenizer, prepare_dataset, write_builtin_corpora
from megatron_demix.data.tokenizer import load_tokenizer, train_bpe

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8.0, help="size of each built-in corpus (--formats: of the documents)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; the fastest counts (machines are noisy)")
    parser.add_argument("--formats", action="store_true", help="compare container formats instead of worker counts")
    parser.add_argument("--megatron-lm", type=Path, metavar="DIR",
                        help="with --formats: also run DIR/tools/preprocess_data.py against `demix prepare` on the plain JSONL")
    args = parser.parse_args()
    if args.megatron_lm and not args.formats:
        parser.error("--megatron-lm compares on --formats' documents: add --formats")
    if args.megatron_lm and not (args.megatron_lm / "tools" / "preprocess_data.py").is_file():
        parser.error(f"--megatron-lm {args.megatron_lm}: no tools/preprocess_data.py there; give a Megatron-LM checkout"
                     " (git clone https://github.com/NVIDIA/Megatron-LM, at the core_v tag of the installed megatron-core)")
    if args.formats:
        formats_bench(args)
    else:
        workers_bench(args)


def workers_bench(args) -> None:
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import outside the timings)

    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    with tempfile.TemporaryDirectory() as work:
        experiment = experiment_from_dict({**data, "work_dir": work, "prepare": {"builtin_megabytes": args.megabytes}})
        write_builtin_corpora(experiment)
        tokenizer = ensure_tokenizer(experiment)
        rows, load = {}, [os.getloadavg()[0]]
        for _ in range(args.repeat):  # interleaved, so drifting load hits every setting alike
            for workers in args.workers:
                for dataset in experiment.datasets:
                    shutil.rmtree(experiment.paths.data / dataset.name, ignore_errors=True)
                    record = prepare_dataset(experiment, dataset, tokenizer, workers)
                    best = rows.get((dataset.name, workers))
                    if best is None or record["seconds"] < best["seconds"]:
                        rows[dataset.name, workers] = record
    names = [d["name"] for d in data["datasets"]]
    print(f"\nbuilt-in corpora of {args.megabytes:g} MB each, BPE vocab {tokenizer.vocab_size}")
    print(f"{'dataset':<10}{'tokens':>12}" + "".join(f"{f'{w} worker(s) tok/s':>22}" for w in args.workers)
          + "".join(f"{f'x{w} / x{args.workers[0]}':>12}" for w in args.workers[1:]))
    for name in names + ["all"]:
        def rate(w):
            chosen = names if name == "all" else [name]
            return sum(rows[n, w]["tokens"] for n in chosen) / sum(rows[n, w]["seconds"] for n in chosen)
        tokens = sum(rows[n, args.workers[0]]["tokens"] for n in (names if name == "all" else [name]))
        print(f"{name:<10}{tokens:>12,}" + "".join(f"{rate(w):>22,.0f}" for w in args.workers)
              + "".join(f"{rate(w) / rate(args.workers[0]):>12.2f}" for w in args.workers[1:]))



# ----------------------------------------------------------------------------- --formats
def _documents(megabytes: float, seed: int = 0) -> list[str]:
    """Distinct web-page-like documents: words of Python's help topics drawn by their frequency there, lengths
    log-normal around 2.5 KB, a paragraph break every 60 words. Distinct, so compressors see text, not repeats."""
    import pydoc_data.topics

    counts = Counter(w for text in pydoc_data.topics.topics.values() for w in text.split())
    words = [w for w, _ in counts.most_common()]
    cumulative, total = [], 0
    for w in words:
        total += counts[w]
        cumulative.append(total)
    rng, texts, size = random.Random(seed), [], 0
    while size < megabytes * 1_000_000:
        drawn = rng.choices(words, cum_weights=cumulative, k=max(8, int(rng.lognormvariate(6.0, 0.7))))
        text = "\n\n".join(" ".join(drawn[i:i + 60]) for i in range(0, len(drawn), 60))
        texts.append(text)
        size += len(text.encode())
    return texts


def _write_formats(root: Path, texts: list[str]) -> dict[str, Path]:
    """The documents, in the same order, in each container (written by each format's own library)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    columns = {"id": list(range(len(texts))), "url": [f"https://example.org/{i}" for i in range(len(texts))], "text": texts}
    plain = root / "docs.jsonl"
    plain.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)))
    zst = root / "docs.jsonl.zst"
    with open(plain, "rb") as source, open(zst, "wb") as target:
        zstandard.ZstdCompressor(level=3).copy_stream(source, target)
    parquet = root / "docs.parquet"
    pq.write_table(pa.table(columns), parquet, row_group_size=len(texts) // 8 + 1)
    saved = root / "saved"
    datasets.Dataset.from_dict(columns).save_to_disk(str(saved))
    return {"jsonl": plain, "parquet": parquet, "jsonl.zst": zst, "save_to_disk": saved}


def _measure(config: dict, name: str, workers: int) -> dict:
    """Prepare one dataset of `config` in this fresh process: its record, and peak memory above the start."""
    # Imports outside the timings (a process's first Parquet read still adds about 70 MiB, the same at 20 or 80 MB).
    import megatron.core.datasets.indexed_dataset  # noqa: F401
    import psutil
    import pyarrow.parquet  # noqa: F401
    import zstandard  # noqa: F401

    experiment = experiment_from_dict(config, "bench")
    tokenizer = load_tokenizer(experiment.tokenizer.path)
    start = psutil.Process().memory_info().rss
    dataset = next(d for d in experiment.datasets if d.name == name)
    record = prepare_dataset(experiment, dataset, tokenizer, workers)
    # The reader's peak is VmHWM, not getrusage's maxrss: that one keeps the peak of the parent this spawned
    # process was forked from (exec does not reset it). A forked worker's RSS counts only the pages it
    # touched, so it is shown whole, not above the start.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    reader_peak = int(status["VmHWM"].split()[0]) * 1024 - start
    return {**record, "start_rss": start, "reader_peak": reader_peak,
            "worker_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())


# ----------------------------------------------------------------------------- --megatron-lm
# Python < 3.12 lacks typing.override, which megatron.training 0.19 imports; typing_extensions has it.
_RUN_TOOL = ("import runpy, sys, typing, typing_extensions\n"
             "typing.override = getattr(typing, 'override', typing_extensions.override)\n"
             "sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def _command_pair(megatron_lm: Path, root: Path, documents: Path, tokenizer: Path, workers: int) -> dict[str, tuple[list[str], Path]]:
    """`demix prepare` and preprocess_data.py on `documents`: each command and the prefix of the `.bin/.idx` it writes."""
    hf = root / "hf_tokenizer"  # what HuggingFaceTokenizer loads: tokenizer.json and the config naming its end of text
    if not hf.is_dir():
        hf.mkdir()
        shutil.copy(tokenizer, hf / "tokenizer.json")
        (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}))
    work, output = root / f"cli-{documents.stem}", root / f"megatron-{documents.stem}"
    # An experiment needs a candidate besides its general dataset: one document, prepared in milliseconds.
    config = root / f"demix-{documents.stem}.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bench", "work_dir": str(work), "model": {"preset": "tiny"}, "tokenizer": {"path": str(tokenizer)},
        "datasets": [{"name": "jsonl", "role": "general", "path": str(documents)},
                     {"name": "one", "role": "candidate", "path": str(root / "one.jsonl")}]}))
    demix = [str(Path(sys.executable).with_name("demix")), "prepare", "--config", str(config), "--workers", str(workers)]
    megatron = [sys.executable, "-c", _RUN_TOOL, str(megatron_lm / "tools" / "preprocess_data.py"), "--input", str(documents),
                "--json-keys", "text", "--output-prefix", str(output / "docs"), "--tokenizer-type", "HuggingFaceTokenizer",
                "--tokenizer-model", str(hf), "--workers", str(workers), "--append-eod"]
    return {"demix prepare": (demix, work / "data" / "jsonl" / "jsonl"),
            "preprocess_data.py": (megatron, output / "docs_text_document")}


def _run_measured(command: list[str], log: Path, timeout: float = 3600, interval: float = 0.5) -> dict:
    """Run `command` to its end: wall seconds; CPU seconds of its whole process tree (every process in it is
    waited for, so its time reaches our RUSAGE_CHILDREN; less bent by the machine's load than wall time); and the peak
    over samples every `interval` s of the tree's summed PSS (shared pages split among the processes sharing them)
    and of its largest process's RSS. A timeout kills the tree: preprocess_data.py waits forever when one of its
    processes dies."""
    import psutil

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start, pss, rss = time.perf_counter(), cpu(), 0, 0
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        tree = psutil.Process(process.pid)
        while True:
            try:
                process.wait(interval)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.perf_counter() - start > timeout:
                os.killpg(process.pid, 9)
                raise RuntimeError(f"{command[0]} ran over {timeout:.0f} s; its output is in {log}")
            memory = []
            for member in [tree, *tree.children(recursive=True)]:
                try:
                    memory.append(member.memory_full_info())
                except psutil.Error:  # exited between the listing and the read
                    pass
            pss, rss = max(pss, sum(m.pss for m in memory)), max(rss, max((m.rss for m in memory), default=0))
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:2])} failed (exit {process.returncode}): {log.read_text()[-2000:]}")
    return {"seconds": seconds, "cpu": cpu() - cpu_start, "pss": pss, "rss": rss}


def _megatron_rows(args, root: Path, plain: Path, tokenizer: Path, rows: dict, workers: int) -> None:
    """One interleaved round of both commands at `workers`, on `plain` and on its first document alone (the
    command's fixed cost: interpreter, imports, pool start); keeps each one's fastest run in `rows`."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    one = root / "one.jsonl"
    if not one.is_file():
        one.write_text(plain.open().readline())
    for documents in (plain, one):
        commands = _command_pair(args.megatron_lm, root, documents, tokenizer, workers)
        for name, (command, prefix) in commands.items():
            shutil.rmtree(prefix.parents[2] if name == "demix prepare" else prefix.parent, ignore_errors=True)
            prefix.parent.mkdir(parents=True, exist_ok=True)
            record = _run_measured(command, root / "command.log")
            dataset = IndexedDataset(str(prefix))  # held while read: its mmap closes when it is collected
            record["tokens"] = int(dataset.sequence_lengths.sum())
            del dataset
            key = (name, workers, documents.stem)
            if key not in rows or record["seconds"] < rows[key]["seconds"]:
                rows[key] = record
        if documents == plain:
            prefixes = [prefix for _, prefix in commands.values()]
            rows["identical", workers] = all(Path(f"{prefixes[0]}{s}").read_bytes() == Path(f"{prefixes[1]}{s}").read_bytes()
                                             for s in (".bin", ".idx"))


def _print_megatron(args, rows: dict, plain: Path) -> None:
    print(f"\n`demix prepare` and {args.megatron_lm}/tools/preprocess_data.py on the plain JSONL"
          f" ({_disk_bytes(plain) / 1e6:.1f} MB), whole processes, best of {args.repeat}; startup: the same command on"
          " its first document alone")
    print("| command | workers | tokens | wall s | CPU s | startup wall s | startup CPU s | tokens/s |"
          " tokens/s after startup | tokens per CPU s after startup | peak PSS, all processes | largest process peak RSS |"
          " .bin/.idx identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for workers in args.workers:
        for name in ("demix prepare", "preprocess_data.py"):
            r, startup = rows[name, workers, plain.stem], rows[name, workers, "one"]
            print(f"| {name} | {workers} | {r['tokens']:,} | {r['seconds']:.1f} | {r['cpu']:.1f} | {startup['seconds']:.1f} |"
                  f" {startup['cpu']:.1f} | {r['tokens'] / r['seconds']:,.0f} | {r['tokens'] / (r['seconds'] - startup['seconds']):,.0f} |"
                  f" {r['tokens'] / (r['cpu'] - startup['cpu']):,.0f} | {r['pss'] / 2**20:.0f} MiB | {r['rss'] / 2**20:.0f} MiB |"
                  f" {'yes' if rows['identical', workers] else 'NO'} |")


def formats_bench(args) -> None:
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        texts = _documents(args.megabytes)
        sources = _write_formats(root, texts)
        tokenizer = train_bpe(texts[:int(len(texts) * min(1.0, 8 / args.megabytes))], 4096, root / "tokenizer.json")  # on 8 MB
        del texts
        names = {"jsonl": "jsonl", "parquet": "parquet", "jsonl.zst": "jsonl_zst", "save_to_disk": "save_to_disk"}
        config = {"name": "bench", "work_dir": str(root / "work"), "model": {"preset": "tiny"},
                  "tokenizer": {"path": str(tokenizer.path)},
                  "datasets": [{"name": names[fmt], "role": "general" if fmt == "jsonl" else "candidate", "path": str(path)}
                               for fmt, path in sources.items()]}
        rows, megatron_rows, load = {}, {}, [os.getloadavg()[0]]
        for _ in range(args.repeat):  # interleaved, so drifting load hits every format alike
            for workers in args.workers:
                if args.megatron_lm:
                    _megatron_rows(args, root, sources["jsonl"], tokenizer.path, megatron_rows, workers)
                for fmt in sources:
                    shutil.rmtree(root / "work" / "data" / names[fmt], ignore_errors=True)
                    with ProcessPoolExecutor(1, spawn) as fresh:  # a fresh process: its own peak memory
                        record = fresh.submit(_measure, config, names[fmt], workers).result()
                    best = rows.get((fmt, workers))
                    if best is None or record["seconds"] < best["seconds"]:
                        rows[fmt, workers] = record
                    identical = all((root / "work" / "data" / names[fmt] / f"{names[fmt]}{s}").read_bytes()
                                    == (root / "work" / "data" / "jsonl" / f"jsonl{s}").read_bytes() for s in (".bin", ".idx"))
                    rows[fmt, workers]["identical"] = identical
                    load.append(os.getloadavg()[0])
        print(f"\nload average (1 min) during the runs: {min(load):.1f} to {max(load):.1f} on {os.cpu_count()} cores")
        print(f"{args.megabytes:g} MB of documents ({rows['jsonl', args.workers[0]]['documents']:,}),"
              f" BPE vocab {tokenizer.vocab_size}; the reading process starts at"
              f" {rows['jsonl', args.workers[0]]['start_rss'] / 2**20:.0f} MiB (megatron-core, pyarrow imported)")
        print("| format | on disk | workers | tokens | seconds | tokens/s | vs JSONL | reader peak RSS above start |"
              " worker peak RSS | .bin/.idx = JSONL's |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for workers in args.workers:
            for fmt, path in sources.items():
                r, base = rows[fmt, workers], rows["jsonl", workers]
                print(f"| {fmt} | {_disk_bytes(path) / 1e6:.1f} MB | {workers} | {r['tokens']:,} | {r['seconds']:.1f} |"
                      f" {r['tokens_per_second']:,} | {r['tokens_per_second'] / base['tokens_per_second']:.2f} |"
                      f" {r['reader_peak'] / 2**20:+.0f} MiB | {r['worker_peak'] / 2**20:.0f} MiB |"
                      f" {'yes' if r['identical'] else 'NO'} |")
        if args.megatron_lm:
            _print_megatron(args, megatron_rows, sources["jsonl"])


if __name__ == "__main__":
    main()
