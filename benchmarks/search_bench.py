"""Benchmark of the mixture search: its compute steps, and its acquisitions at equal budget.

    .venv/bin/python benchmarks/search_bench.py                      # both tables (about a minute)
    .venv/bin/python benchmarks/search_bench.py --only speed --repeat 3
    .venv/bin/python benchmarks/search_bench.py --only acquisition --seeds 8

1. speed: with the paper's 7-candidate prior, sample 1M candidates; fit 12 LightGBM regressors
   (300 iterations, lr 0.02) on 224 points; predict a 200k pool with them (the search's own
   Predictor.predict: TreeTables, compiling included); plus, reported apart, LightGBM's own
   Booster.predict on the same pool (what the search used before, once; its largest difference
   from the tables) and the cross-validated Spearman that `predictor: auto` adds (LightGBM,
   Ridge and quadratic, 5 folds, 12 targets). Goal: the first three under 10 s in total. Median
   of --repeat runs per step.
2. acquisition: the synthetic objective of the tests, in 7 dimensions with the paper's DeMix-224
   mixture as the optimum (two smooth scores, noise 0.01): random search, `top_random` and `ucb`
   at equal budget (rounds 16+8+4 and 32+16+8), per seed; the search's rounds, fits and
   acquisitions are the library's own (Search.propose); only the evaluation is done in-process
   (the synthetic formula) instead of through array jobs, which tests/search already cover.
   Reported: L1 distance of the answer to the optimum (lower is better) and its noise-free score.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "search"))

from megatron_demix.experiment import experiment_from_dict  # noqa: E402
from megatron_demix.runtime.files import atomic_write_json  # noqa: E402
from megatron_demix.search.config import SearchConfig  # noqa: E402
from megatron_demix.search.driver import Search  # noqa: E402
from megatron_demix.search.objective import composite  # noqa: E402
from megatron_demix.search.predictor import fit_predictor  # noqa: E402
from megatron_demix.search.sampler import MixtureSpace  # noqa: E402
from megatron_demix.search.tree_tables import TreeTables  # noqa: E402
from synthetic_eval import true_scores  # noqa: E402

PAPER_PRIOR = {"general_target": 0.500, "math_very_high": 0.111, "math_high": 0.027, "math_medium": 0.039,
               "code_very_high": 0.020, "code_high": 0.055, "code_medium": 0.248}
DEMIX_224 = {"general_target": 0.218, "math_very_high": 0.403, "math_high": 0.002, "math_medium": 0.063,
             "code_very_high": 0.044, "code_high": 0.176, "code_medium": 0.094}


def timed(function, repeat: int):
    """(median wall seconds, median CPU seconds of this process, all threads, the last value)."""
    times, cpu, value = [], [], None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = function()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu), value


def speed(repeat: int) -> None:
    config = SearchConfig(predictor="lightgbm")
    space = MixtureSpace.build(PAPER_PRIOR, config)
    sample_s, sample_cpu, million = timed(lambda: space.sample(1_000_000, np.random.default_rng(0)), repeat)
    pool = million[:200_000]
    rng = np.random.default_rng(1)
    X = million[rng.choice(len(million), 224, replace=False)]
    directions = rng.normal(size=(7, 12))
    Y = np.sin(X @ directions * 3) + rng.normal(0, 0.01, (224, 12))  # 12 smooth, different targets
    targets = [f"t{i}" for i in range(12)]
    fit_s, fit_cpu, predictor = timed(lambda: fit_predictor(X, Y, targets, config, cross_validate=False), repeat)
    predict_s, predict_cpu, predicted = timed(lambda: predictor.predict(pool), repeat)
    boosters = [model.booster_ for model in predictor.models]
    compile_s, compile_cpu, _ = timed(lambda: TreeTables.compile(boosters), repeat)
    cores = len(os.sched_getaffinity(0))
    lightgbm_s, lightgbm_cpu, before = timed(lambda: np.stack([b.predict(pool, num_threads=cores) for b in boosters], axis=1), 1)
    cv_s, cv_cpu, _ = timed(lambda: fit_predictor(X, Y, targets, SearchConfig(predictor="auto")), 1)
    total = sample_s + fit_s + predict_s
    load = os.getloadavg()[0]
    print(f"\n## Speed (median of {repeat}; {cores} cores, load average {load:.1f} at the end)\n")
    print("| step | wall s | CPU s (all threads) | wall share of the 10 s goal |\n|---|---|---|---|")
    for name, seconds, cpu in [("sample 1M candidates (7 datasets)", sample_s, sample_cpu),
                               ("fit 12 LightGBM regressors on 224 points", fit_s, fit_cpu),
                               ("predict a 200k pool (12 targets; TreeTables)", predict_s, predict_cpu),
                               ("**total**", total, sample_cpu + fit_cpu + predict_cpu)]:
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {seconds / 10:.0%} |")
    print(f"| (in the predict step) compiling the {len(boosters)} boosters to tables | {compile_s:.2f} | {compile_cpu:.2f} | |")
    print(f"| (before, once) LightGBM Booster.predict, same pool, {cores} threads: {lightgbm_s / predict_s:.1f}x the "
          f"TreeTables time; largest difference {np.abs(predicted - before).max():.1e} | {lightgbm_s:.2f} | {lightgbm_cpu:.2f} | |")
    print(f"| (not in the goal) `auto`: 5-fold CV Spearman of the three kinds, 12 targets | {cv_s:.2f} | {cv_cpu:.2f} | |")


def _experiment(work: Path, sizes: list[int], acquisition: str, seed: int):
    data = {"name": "bench", "work_dir": str(work),
            "datasets": [{"name": "general", "role": "general", "builtin": "prose"}]
                        + [{"name": n, "builtin": "prose"} for n in PAPER_PRIOR],
            "search": {"prior": PAPER_PRIOR, "pool_size": 50_000, "round_sizes": sizes, "top_k": 32,
                       "acquisition": acquisition, "seed": seed, "predictor": "lightgbm"}}
    return experiment_from_dict(data, "bench")


def _measure(mixture: dict, seed: int, noise: float) -> dict:
    digest = hashlib.sha256(f"{seed} {json.dumps(mixture, sort_keys=True)}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    scores = true_scores(mixture, DEMIX_224)
    return {"general": scores["quality"] + rng.normal(0, noise), "target": scores["closeness"] + rng.normal(0, noise)}


def run_in_process(experiment, seed: int, noise: float) -> dict:
    """The search's own propose/fit steps, with the evaluation done here (the synthetic formula)."""
    search = Search(experiment)
    search.paths.root.mkdir(parents=True, exist_ok=True)
    pool = search.pool()
    for r, size in enumerate(experiment.search.sizes):
        round_paths = search.paths.round(r)
        for proposal in search.propose(r, size, pool):
            domains = _measure(proposal["mixture"], seed, noise)
            atomic_write_json(round_paths.result(proposal["id"]), {"id": proposal["id"], "mixture": proposal["mixture"],
                                                                   "domains": domains, "metrics": domains})
        atomic_write_json(round_paths.proposals, [])
    _, _, scores, _, _ = search.fit(search.results(), pool, ensemble=False)
    final = pool[np.argsort(-scores, kind="stable")[: experiment.search.top_k]].mean(axis=0)
    return dict(zip(search.names, final.tolist()))


def random_search(budget: int, seed: int, noise: float) -> dict:
    space = MixtureSpace.build(PAPER_PRIOR, SearchConfig())
    picks = space.sample(budget, np.random.default_rng(seed + 1000))
    mixtures = [dict(zip(space.names, row.tolist())) for row in picks]
    measured = np.array([list(_measure(m, seed, noise).values()) for m in mixtures])
    return mixtures[int(np.argmax(composite(measured, measured, ["general", "target"], "macro_rank", {})))]


def acquisition_table(seeds: int, noise: float = 0.01) -> None:
    import logging

    logging.getLogger("megatron_demix").setLevel(logging.WARNING)
    distance = lambda m: sum(abs(m[n] - DEMIX_224[n]) for n in DEMIX_224)  # noqa: E731
    quality = lambda m: true_scores(m, DEMIX_224)["quality"]  # noqa: E731
    print(f"\n## Acquisitions at equal budget (7 candidates, optimum = DeMix-224 mixture, noise {noise}; "
          "L1 distance to the optimum / noise-free score)\n")
    print("| rounds | seed | random search | top_random | ucb |\n|---|---|---|---|---|")
    for sizes in ([16, 8, 4], [32, 16, 8]):
        rows = {"random": [], "top_random": [], "ucb": []}
        for seed in range(seeds):
            answers = {"random": random_search(sum(sizes), seed, noise)}
            for acquisition in ("top_random", "ucb"):
                with tempfile.TemporaryDirectory() as work:
                    answers[acquisition] = run_in_process(_experiment(Path(work), sizes, acquisition, seed), seed, noise)
            for name, mixture in answers.items():
                rows[name].append((distance(mixture), quality(mixture)))
            print(f"| {'+'.join(map(str, sizes))} | {seed} | " + " | ".join(
                f"{distance(answers[n]):.3f} / {quality(answers[n]):.3f}" for n in rows) + " |", flush=True)
        print(f"| {'+'.join(map(str, sizes))} | **mean** | " + " | ".join(
            f"**{np.mean([d for d, _ in rows[n]]):.3f} / {np.mean([q for _, q in rows[n]]):.3f}**" for n in rows) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("speed", "acquisition"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.only in (None, "speed"):
        speed(args.repeat)
    if args.only in (None, "acquisition"):
        acquisition_table(args.seeds)


if __name__ == "__main__":
    main()
