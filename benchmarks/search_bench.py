"""Benchmark of the mixture search: its compute steps, and the answer it finds on objectives with known optima.

    .venv/bin/python benchmarks/search_bench.py                      # both tables
    .venv/bin/python benchmarks/search_bench.py --only speed --repeat 3
    .venv/bin/python benchmarks/search_bench.py --only gain --seeds 20 --processes 2

1. speed: with the paper's 7-candidate prior, sample 1M candidates; fit 12 LightGBM regressors
   (300 iterations, lr 0.02) on 224 points; predict a 200k pool with them (the search's own
   Predictor.predict: TreeTables, compiling included); plus, reported apart, LightGBM's own
   Booster.predict on the same pool and the cross-validated Spearman that `predictor: auto` adds.
   Goal: the first three under 10 s in total. Median of --repeat runs per step.
2. gain: synthetic objectives with known optima (tests/search/synthetic_objectives.py: a quadratic and
   a data-mixing law, at 3 and 6 candidates), noise at NOISE_SPREAD of each domain's spread; per seed
   and method a whole 16 + 8 + 4 search with the search's own decisions (search/policy.py: the same
   code the driver runs; only the evaluation is the formula instead of array jobs, which tests/search
   cover), and random search (the best measured of 28 pool draws). Reported: the gain toward the
   optimum (f(answer) - f(prior)) / (f(optimum) - f(prior)), where f is the true composite.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "search"))

from megatron_demix.search.config import SearchConfig  # noqa: E402
from megatron_demix.search.objective import composite  # noqa: E402
from megatron_demix.search.predictor import fit_predictor  # noqa: E402
from megatron_demix.search.sampler import MixtureSpace  # noqa: E402
from megatron_demix.search.tree_tables import TreeTables  # noqa: E402

PAPER_PRIOR = {"general_target": 0.500, "math_very_high": 0.111, "math_high": 0.027, "math_medium": 0.039,
               "code_very_high": 0.020, "code_high": 0.055, "code_medium": 0.248}


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


REFERENCE = dict(predictor="lightgbm", acquisition="top_random", objective="macro_rank", final="top_k_mean", top_k=128,
                 local_candidates=0, climb_starts=0, evaluate_final=False)
"""The DeMix reference code's search (with LightGBM's leaves sized to the points: its own defaults fit constants)."""
METHODS = {
    "reference": REFERENCE,
    "default": {},
    "previous default": dict(predictor="lightgbm", climb_starts=0, final="top_k_mean"),
    "default/no climb": dict(climb_starts=0),
    "default/top_k_mean": dict(final="top_k_mean"),
    "default/top_spread": dict(acquisition="top_spread"),
    "default/no check": dict(evaluate_final=False),
    "default/macro_rank": dict(objective="macro_rank"),
    "law_one_cost": dict(predictor="law_one_cost"),
    "gp": dict(predictor="gp"),
    "quadratic": dict(predictor="quadratic"),
    "lightgbm": dict(predictor="lightgbm"),
    "auto": dict(predictor="auto", auto_kinds=["gp", "quadratic", "law", "lightgbm"]),
    "ei (gp)": dict(predictor="gp", acquisition="ei"),
    "ucb": dict(acquisition="ucb"),
}
"""Search settings compared: name -> SearchConfig fields over the defaults."""


def run_policy(objective, config: SearchConfig, sizes=(16, 8, 4)) -> np.ndarray:
    """One search on a synthetic objective with the search's own decisions (search/policy.py), evaluations in-process:
    round 0 random from the pool, then proposals, the answer, its own evaluation and the check."""
    from megatron_demix.search.policy import Evidence, Surrogate, check_answer, choose_answer, propose

    targets = [f"d{i}" for i in range(len(objective.scale))]
    space = MixtureSpace.build(dict(zip(objective.names, objective.prior)), config)
    pool = space.sample(config.pool_size, np.random.default_rng(config.seed))
    rng, noise = np.random.default_rng([objective.seed, 1]), np.random.default_rng([objective.seed, 2])
    X = pool[rng.choice(len(pool), sizes[0], replace=False)]
    Y = objective.measure(X, noise)

    def fit():
        evidence = Evidence(X, Y, targets, np.tile(objective.noise, (len(X), 1)))  # lm-eval reports its stderrs
        return Surrogate.fit(evidence, pool, objective.prior, config, cross_validate=config.predictor == "auto")

    for size in sizes[1:]:
        rows = propose(fit(), pool, space, size, rng)[0]
        X, Y = np.concatenate([X, rows]), np.concatenate([Y, objective.measure(rows, noise)])
    answer = choose_answer(fit(), pool, space, rng)
    if config.evaluate_final:
        X = np.concatenate([X, answer.mixture[None]])
        Y = np.concatenate([Y, objective.measure(answer.mixture[None], noise)])
        answer = check_answer(fit(), answer, len(X) - 1)[0]
    return answer.mixture


def random_search(objective, config: SearchConfig, budget: int) -> np.ndarray:
    """The baseline: `budget` random pool mixtures, the best measured (standardized composite, as `f`)."""
    space = MixtureSpace.build(dict(zip(objective.names, objective.prior)), config)
    pool = space.sample(config.pool_size, np.random.default_rng(config.seed))
    X = pool[np.random.default_rng([objective.seed, 3]).choice(len(pool), budget, replace=False)]
    Y = objective.measure(X, np.random.default_rng([objective.seed, 4]))
    return X[int(np.argmax(composite(Y, Y, [f"d{i}" for i in range(Y.shape[1])], "standardized", {}, measured=Y)))]


def _one(task):
    name, seed, method = task
    from synthetic_objectives import OBJECTIVES

    objective = OBJECTIVES[name](seed)
    config = SearchConfig(pool_size=20_000, seed=seed, **METHODS.get(method, {}))
    start = time.perf_counter()
    answer = random_search(objective, config, 28) if method == "random" else run_policy(objective, config)
    return name, method, seed, objective.gain(answer), time.perf_counter() - start


def gain_table(seeds: int, methods: list[str], objectives: list[str], processes: int) -> None:
    """Gain toward the optimum per objective and method: mean, median, 10th percentile over seeds."""
    import logging
    from multiprocessing import get_context

    from synthetic_objectives import NOISE_SPREAD

    logging.getLogger("megatron_demix").setLevel(logging.WARNING)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose among {', '.join(METHODS)}")
    tasks = [(name, seed, method) for name in objectives for method in ["random", *methods] for seed in range(seeds)]
    gains: dict[tuple[str, str], list[float]] = {}
    start = time.perf_counter()
    with get_context("spawn").Pool(processes) as workers:
        for done, (name, method, seed, gain, seconds) in enumerate(workers.imap_unordered(_one, tasks), 1):
            gains.setdefault((name, method), []).append(gain)
            if done % 20 == 0 or done == len(tasks):
                elapsed = time.perf_counter() - start
                print(f"# {done}/{len(tasks)} searches, {elapsed:.0f} s, ETA {elapsed / done * (len(tasks) - done):.0f} s",
                      file=sys.stderr, flush=True)
    print(f"\n## Gain toward the optimum, (f(answer) - f(prior)) / (f(optimum) - f(prior)), {seeds} seeds, "
          f"16 + 8 + 4 evaluations (+ the answer's own), noise {NOISE_SPREAD} x each domain's spread; "
          "goal: mean >= 0.90, p10 >= 0.70, ahead of random\n")
    print("| objective | method | mean | median | p10 | min |\n|---|---|---|---|---|---|")
    for name in objectives:
        for method in ["random", *methods]:
            g = np.array(gains[(name, method)])
            print(f"| {name} | {method} | {g.mean():.2f} | {np.median(g):.2f} | {np.percentile(g, 10):.2f} | {g.min():.2f} |")


def main() -> None:
    from synthetic_objectives import OBJECTIVES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("speed", "gain"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help=f"comma-separated, of {', '.join(OBJECTIVES)}")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.only in (None, "speed"):
        speed(args.repeat)
    if args.only in (None, "gain"):
        gain_table(args.seeds, args.methods.split(","), args.objectives.split(","), args.processes)


if __name__ == "__main__":
    main()
