"""Preparation throughput: tokens/s with 1 and 2 tokenizer workers, side by side in one run.

    .venv/bin/python benchmarks/prepare_bench.py [--megabytes 8] [--workers 1 2]

Tokenizes the built-in corpora (best of --repeat runs) (a trained 4096-token BPE) into Megatron indexed datasets from
scratch for each worker count and prints tokens/s per dataset, and the ratio to 1 worker.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml

from megatron_demix.experiment import experiment_from_dict
from megatron_demix.data.prepare import ensure_tokenizer, prepare_dataset, write_builtin_corpora

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8.0, help="size of each built-in corpus")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; the fastest counts (machines are noisy)")
    args = parser.parse_args()
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import outside the timings)

    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    with tempfile.TemporaryDirectory() as work:
        experiment = experiment_from_dict({**data, "work_dir": work, "prepare": {"builtin_megabytes": args.megabytes}})
        write_builtin_corpora(experiment)
        tokenizer = ensure_tokenizer(experiment)
        rows = {}
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


if __name__ == "__main__":
    main()
