"""Which candidate mixtures the next round evaluates (`search.acquisition`, a registry).

- `ei`: expected improvement of the composite score over the best predicted score of an
  evaluated mixture, under the predictor's uncertainty (the Gaussian process's posterior, else the
  bootstrap ensemble's spread); picked greedily under a minimum L1 distance to every earlier pick and
  evaluated mixture. It spends proxies where a gain is likely, not only where the mean is highest.
- `top_spread`: the best predicted mixtures under the same distance rule (pure exploitation).
- `top_random` (the paper's, the default): a uniform random subset of the `acquisition_top` best predicted mixtures
  not yet evaluated; exploitation with some spread, cheap.
- `ucb`: a bootstrap ensemble's composite mean + kappa x std (optimism where the regressors disagree).
A merged proxy costs one evaluation, which makes spending some on uncertainty affordable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # search/config.py takes its choices from ACQUISITIONS below
    from megatron_demix.search.config import SearchConfig


@dataclass
class Candidates:
    """What an acquisition chooses from: candidate mixtures, their predicted composite scores and what was evaluated."""

    pool: np.ndarray
    score: np.ndarray
    """Composite score of the main predictor per candidate row."""
    ensemble_scores: np.ndarray | None
    """[members, candidates] composite scores of the bootstrap ensemble (acquisitions with `needs_ensemble`)."""
    evaluated: np.ndarray
    """Boolean mask of candidate rows already evaluated."""
    evaluated_mixtures: np.ndarray
    """[e, k] every mixture evaluated so far (candidate or not), for distance constraints."""
    score_std: np.ndarray | None = None
    """Standard deviation of the composite score per candidate (the Gaussian process's), when known."""
    incumbent: float | None = None
    """The best predicted composite score among the evaluated mixtures (what `ei` must improve on)."""


def spread_picks(c: Candidates, order: np.ndarray, n: int, config: SearchConfig) -> np.ndarray:
    """The first `n` of `order` (best first) that keep `min_distance` (L1) from each other and from every
    evaluated mixture; when the rule cannot be met any more, the best remaining."""
    order = order[~c.evaluated[order]]
    shortlist = order[: max(50 * n, 1000)]
    nearest = np.full(len(shortlist), np.inf)
    for mixture in c.evaluated_mixtures:
        nearest = np.minimum(nearest, np.abs(c.pool[shortlist] - mixture).sum(axis=1))
    picks = []
    for _ in range(n):
        allowed = np.flatnonzero(nearest >= config.min_distance)
        if not len(allowed):
            allowed = np.flatnonzero(nearest > -np.inf)
            if not len(allowed):
                break
        best = allowed[0]  # shortlist is in acquisition order
        picks.append(shortlist[best])
        nearest = np.minimum(nearest, np.abs(c.pool[shortlist] - c.pool[shortlist[best]]).sum(axis=1))
        nearest[best] = -np.inf  # picked
    return np.array(picks, dtype=np.int64)


def top_random(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    order = np.argsort(-c.score, kind="stable")
    order = order[~c.evaluated[order]][: max(config.acquisition_top, n)]
    return rng.choice(order, size=min(n, len(order)), replace=False)


def top_spread(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    return spread_picks(c, np.argsort(-c.score, kind="stable"), n, config)


def ucb(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    upper = c.ensemble_scores.mean(axis=0) + config.ucb_kappa * c.ensemble_scores.std(axis=0)
    return spread_picks(c, np.argsort(-upper, kind="stable"), n, config)


def expected_improvement(mean: np.ndarray, std: np.ndarray, incumbent: float) -> np.ndarray:
    """E[max(0, f - incumbent)] for f ~ N(mean, std^2) (0 spread: the plain improvement)."""
    from scipy.stats import norm

    std = np.maximum(std, 1e-12)
    z = (mean - incumbent) / std
    return (mean - incumbent) * norm.cdf(z) + std * norm.pdf(z)


def ei(c: Candidates, n: int, rng: np.random.Generator, config: SearchConfig) -> np.ndarray:
    if c.score_std is not None:
        mean, std = c.score, c.score_std
    else:
        mean, std = c.ensemble_scores.mean(axis=0), c.ensemble_scores.std(axis=0)
    finite = np.isfinite(mean)  # rows below a domain floor score -inf: never picked
    incumbent = c.incumbent if c.incumbent is not None else float(mean[finite].max())
    gain = np.full(len(mean), -np.inf)
    gain[finite] = expected_improvement(mean[finite], std[finite], incumbent)
    return spread_picks(c, np.lexsort((-c.score, -gain)), n, config)  # ties (no gain anywhere): the best predicted


@dataclass(frozen=True)
class Acquisition:
    """A registry entry: the picking function and what it needs from the surrogate."""

    pick: Callable[[Candidates, int, np.random.Generator, "SearchConfig"], np.ndarray]
    uncertainty: bool = False
    """Needs the composite's spread per candidate: the GP's own when the objective is linear in the targets,
    else a bootstrap ensemble's."""
    ensemble: bool = False
    """Needs the bootstrap ensemble itself."""


ACQUISITIONS = {"top_random": Acquisition(top_random), "ei": Acquisition(ei, uncertainty=True),
                "top_spread": Acquisition(top_spread), "ucb": Acquisition(ucb, ensemble=True)}
"""`search.acquisition` -> its entry (search/config.py takes the allowed names from here)."""
