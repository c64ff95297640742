"""Which pool mixtures the next round evaluates (`search.acquisition`, a registry).

- `top_random` (the paper): a uniform random subset of the `acquisition_top` best predicted pool
  mixtures not yet evaluated; exploitation with some spread, cheap.
- `ucb`: a bootstrap ensemble's composite mean + kappa x std (optimism where the regressors
  disagree), picked greedily under a minimum L1 distance to every earlier pick and evaluated
  mixture, so a round does not spend its proxies on near-copies. A merged proxy costs one
  evaluation, which makes spending some on uncertainty affordable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_demix.search.config import SearchConfig


@dataclass
class Candidates:
    """What an acquisition chooses from: the pool, its predicted composite scores and what was evaluated."""

    pool: np.ndarray
    score: np.ndarray
    """Composite score of the main predictor per pool row."""
    ensemble_scores: np.ndarray | None
    """[members, pool] composite scores of the bootstrap ensemble (acquisitions with `needs_ensemble`)."""
    evaluated: np.ndarray
    """Boolean mask of pool rows already evaluated."""
    evaluated_mixtures: np.ndarray
    """[e, k] every mixture evaluated so far (pool or not), for distance constraints."""


def top_random(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    order = np.argsort(-c.score, kind="stable")
    order = order[~c.evaluated[order]][: max(config.acquisition_top, n)]
    return rng.choice(order, size=min(n, len(order)), replace=False)


def ucb(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    upper = c.ensemble_scores.mean(axis=0) + config.ucb_kappa * c.ensemble_scores.std(axis=0)
    order = np.argsort(-upper, kind="stable")
    order = order[~c.evaluated[order]]
    shortlist = order[: max(50 * n, 1000)]
    nearest = np.full(len(shortlist), np.inf)
    for mixture in c.evaluated_mixtures:
        nearest = np.minimum(nearest, np.abs(c.pool[shortlist] - mixture).sum(axis=1))
    picks = []
    for _ in range(n):
        allowed = np.flatnonzero(nearest >= config.min_distance)
        if not len(allowed):  # the constraint cannot be met any more: take the best remaining
            allowed = np.flatnonzero(nearest > -np.inf)
            if not len(allowed):
                break
        best = allowed[0]  # shortlist is in UCB order
        picks.append(shortlist[best])
        nearest = np.minimum(nearest, np.abs(c.pool[shortlist] - c.pool[shortlist[best]]).sum(axis=1))
        nearest[best] = -np.inf  # picked
    return np.array(picks, dtype=np.int64)


ACQUISITIONS = {"top_random": top_random, "ucb": ucb}
"""name -> function(candidates, n, rng, config) -> pool indices."""
NEEDS_ENSEMBLE = {"ucb"}
