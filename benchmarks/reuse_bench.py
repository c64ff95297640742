"""Benchmark of a candidate added to a finished search (issue 29): evaluations reused against a fresh search.

    .venv/bin/python benchmarks/reuse_bench.py                        # 20 seeds, 2 processes: 10 min on 2 quiet cores
    .venv/bin/python benchmarks/reuse_bench.py --seeds 8 --processes 2  # ~9 min a seed on 2 loaded cores

The objective is search_bench.py's data-mixing law (tests/search/synthetic_objectives.py) at seven
candidates: law-6's math and code tiers plus `web`, a general-data candidate whose optimum share is not 0.
Per seed:
- reuse: a 6-candidate search (16 + 8 + 4, its answer evaluated) over the tiers, web absent (share 0); then
  web is added as the driver does (search/driver.py `Search.extend`): a pool on the 7-candidate simplex, one
  round of 8 drawn from it at random, then 8 proposed; the answer chosen and checked after 8 and after 16
  more evaluations, every earlier one used as data;
- fresh: a 7-candidate search from nothing given 8 (one random round), 16 (8 + 8) and 28 (16 + 8 + 4).
Every search decides with the search's own code (search/policy.py, as search_bench.py's `run_policy`), and
each answer's own evaluation is counted. Reported: gain toward the 7-candidate optimum,
(f(answer) - f(prior)) / (f(optimum) - f(prior)), mean / median / p10 over seeds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_bench  # noqa: E402,F401  (puts the repository and tests/search on the path)

from megatron_demix.search.config import SearchConfig  # noqa: E402
from megatron_demix.search.policy import Evidence, Surrogate, check_answer, choose_answer, propose  # noqa: E402
from megatron_demix.search.sampler import MixtureSpace  # noqa: E402
from synthetic_objectives import MixingLaw6  # noqa: E402

ADDED = "web"


MIN_OPTIMUM_SHARE = 0.02
"""Seeds where the added candidate's optimum share is below this are skipped (nothing to find by adding it)."""


class MixingLaw7(MixingLaw6):
    """law-6 with a general-data candidate too (MixingLaw's `web`), three times as useful to the general domain as
    MixingLaw makes it: at its usual strength the tiers' own general effect leaves its optimum share at 0."""

    web_share = 0.4

    def build(self) -> None:
        super().build()
        self.t[0, self.names.index(ADDED)] *= 3


def search(objective, config: SearchConfig, index: list[int], sizes, rng, noise, X=None, Y=None):
    """Rounds of `sizes` over the candidates `index` (a pool on their simplex; the first round at random from it, the
    rest proposed), after the evaluations X, Y if any; then the answer, its own evaluation and the check. Returns
    (answer, X, Y), mixtures over all 7 candidates (those outside `index` at share 0)."""
    targets = [f"d{i}" for i in range(len(objective.scale))]
    prior = objective.prior[index] / objective.prior[index].sum()
    space = MixtureSpace.build(dict(zip([objective.names[i] for i in index], prior)), config)
    pool = space.sample(config.pool_size, np.random.default_rng(config.seed))
    X = np.empty((0, len(index))) if X is None else X[:, index]
    Y = np.empty((0, len(targets))) if Y is None else Y

    def measure(rows):
        full = np.zeros((len(rows), len(objective.names)))
        full[:, index] = rows
        return objective.measure(full, noise)

    def fit():
        evidence = Evidence(X, Y, targets, np.tile(objective.noise, (len(X), 1)))
        return Surrogate.fit(evidence, pool, prior, config, cross_validate=False)

    for i, size in enumerate(sizes):
        rows = pool[rng.choice(len(pool), size, replace=False)] if i == 0 else propose(fit(), pool, space, size, rng)[0]
        X, Y = np.concatenate([X, rows]), np.concatenate([Y, measure(rows)])
    answer = choose_answer(fit(), pool, space, rng)
    X = np.concatenate([X, answer.mixture[None]])
    Y = np.concatenate([Y, measure(answer.mixture[None])])
    full = np.zeros((len(X), len(objective.names)))
    full[:, index] = X
    chosen = np.zeros(len(objective.names))
    chosen[index] = check_answer(fit(), answer, len(X) - 1)[0].mixture
    return chosen, full, Y


def _one(seed: int) -> dict:
    import logging

    logging.getLogger("megatron_demix").setLevel(logging.WARNING)
    objective = MixingLaw7(seed)
    config = SearchConfig(pool_size=20_000, seed=seed)
    everything = list(range(len(objective.names)))
    tiers = [i for i in everything if objective.names[i] != ADDED]
    start = time.perf_counter()

    def rngs(tag: int):
        return np.random.default_rng([seed, tag, 1]), np.random.default_rng([seed, tag, 2])

    answer, X, Y = search(objective, config, tiers, (16, 8, 4), *rngs(0))
    gains = {"before (28 + answer, 6 candidates)": objective.gain(answer)}
    answer, _, _ = search(objective, config, everything, (8,), *rngs(1), X, Y)
    gains["reuse +8"] = objective.gain(answer)
    # +16: the same 8 random draws, then 8 proposed (the +8 answer's evaluation left out: 16 more in all).
    answer, _, _ = search(objective, config, everything, (8, 8), *rngs(1), X, Y)
    gains["reuse +16"] = objective.gain(answer)
    for budget, sizes in ((8, (8,)), (16, (8, 8)), (28, (16, 8, 4))):
        answer, _, _ = search(objective, config, everything, sizes, *rngs(2))
        gains[f"fresh {budget}"] = objective.gain(answer)
    return {"seed": seed, "gains": gains, "optimum_share": float(objective.optimum[objective.names.index(ADDED)]),
            "seconds": time.perf_counter() - start}


def main() -> None:
    from multiprocessing import get_context

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    seeds, seed = [], 0
    while len(seeds) < args.seeds:
        objective = MixingLaw7(seed)
        if objective.optimum[objective.names.index(ADDED)] >= MIN_OPTIMUM_SHARE:
            seeds.append(seed)
        seed += 1
    print(f"# seeds {seeds} ({seed - len(seeds)} skipped: the added candidate's optimum share below {MIN_OPTIMUM_SHARE})",
          file=sys.stderr, flush=True)
    with get_context("spawn").Pool(args.processes) as workers:
        runs = []
        for run in workers.imap_unordered(_one, seeds):
            runs.append(run)
            print(f"# seed {run['seed']}: {run['seconds']:.0f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in run["gains"].items()),
                  file=sys.stderr, flush=True)
    shares = np.array([r["optimum_share"] for r in runs])
    print(f"\n## Reuse after adding a 7th candidate: gain toward the 7-candidate optimum, {args.seeds} seeds"
          f" ({time.perf_counter() - start:.0f} s); the added candidate's optimum share {shares.mean():.3f} on average"
          f" (min {shares.min():.3f}); {seed - len(seeds)} seed(s) skipped (optimum share below {MIN_OPTIMUM_SHARE})\n")
    print("| search | evaluations (+ the answer's own) | mean | median | p10 |\n|---|---|---|---|---|")
    counts = {"before (28 + answer, 6 candidates)": "28 + 1", "reuse +8": "29 earlier + 8 + 1",
              "reuse +16": "29 earlier + 16 + 1", "fresh 8": "8 + 1", "fresh 16": "16 + 1", "fresh 28": "28 + 1"}
    for name, count in counts.items():
        g = np.array([r["gains"][name] for r in runs])
        print(f"| {name} | {count} | {g.mean():.2f} | {np.median(g):.2f} | {np.percentile(g, 10):.2f} |")


if __name__ == "__main__":
    main()
