"""Which surrogate can point at the optimum: each predictor kind fitted to n random pool mixtures of a synthetic
objective (no search rounds), its predicted composite maximised over the capped simplex, the true gain there.

    .venv/bin/python benchmarks/search_model_class.py --objective law-6 --kinds law,gp,quadratic --points 28 --seeds 8

Separates the model from the search: benchmarks/search_bench.py measures both together.
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "search"))

from megatron_demix.search.config import SearchConfig  # noqa: E402
from megatron_demix.search.predictor import fit_predictor  # noqa: E402
from megatron_demix.search.sampler import MixtureSpace  # noqa: E402
from synthetic_objectives import OBJECTIVES  # noqa: E402


def gains(name: str, kind: str, points: int, seeds: int) -> np.ndarray:
    out = []
    for seed in range(seeds):
        objective = OBJECTIVES[name](seed)
        space = MixtureSpace.build(dict(zip(objective.names, objective.prior)), SearchConfig(seed=seed))
        pool = space.sample(20_000, np.random.default_rng(seed))
        X = pool[np.random.default_rng([seed, 1]).choice(len(pool), points, replace=False)]
        Y = objective.measure(X, np.random.default_rng([seed, 2]))
        targets = [f"d{i}" for i in range(Y.shape[1])]
        predictor = fit_predictor(X, Y, targets, SearchConfig(predictor=kind), cross_validate=False, prior=objective.prior)
        fitted = copy.copy(objective)  # the objective's own maximiser, on the predictor's domain scores
        fitted.domains, fitted.rng = predictor.predict, np.random.default_rng(0)
        out.append(objective.gain(fitted._maximise()))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", default="law-6", choices=sorted(OBJECTIVES))
    parser.add_argument("--kinds", default="law,gp,quadratic")
    parser.add_argument("--points", type=int, default=28)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"\n{args.objective}, {args.points} random pool points, {args.seeds} seeds: gain of the fitted model's optimum\n")
    print("| kind | mean | median | p10 | min |\n|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        g = gains(args.objective, kind, args.points, args.seeds)
        print(f"| {kind} | {g.mean():.2f} | {np.median(g):.2f} | {np.percentile(g, 10):.2f} | {g.min():.2f} |")


if __name__ == "__main__":
    main()
