"""Mixtures `demix validate` draws: references over the whole simplex, and random search's candidates.

    simplex_mixtures(6, 24, max_share=0.6, min_spacing=0.3, rng)     # [24, 6], kept in draw order
    best_by_objective(results, experiment.search)                   # the random-search mixture the search's objective prefers

References drawn around the token prior (the search's own sampler) cluster where the search looks
and can make every method look good on a narrow range; flat-Dirichlet references spread over the
whole simplex, away from its corners (where one candidate alone would decide every ranking) and
from each other (two near-identical mixtures differ only by noise).
"""
from __future__ import annotations

import numpy as np

from megatron_demix.config.base import ConfigError


def simplex_mixtures(k: int, n: int, *, max_share: float, min_spacing: float, rng: np.random.Generator,
                     max_draws: int = 200_000) -> np.ndarray:
    """n rows of a flat Dirichlet over k candidates, each share <= max_share, every two rows >= min_spacing
    apart in L1; draws are taken in order and a draw too close to a kept row is rejected."""
    kept: list[np.ndarray] = []
    drawn = 0
    while len(kept) < n and drawn < max_draws:
        batch = rng.dirichlet(np.ones(k), size=1024)
        drawn += len(batch)
        for row in batch[batch.max(axis=1) <= max_share]:
            if all(np.abs(row - other).sum() >= min_spacing for other in kept):
                kept.append(row)
                if len(kept) == n:
                    break
    if len(kept) < n:
        raise ConfigError(f"validate.references: only {len(kept)} of {n} mixtures of {k} candidates found in {drawn:,}"
                          f" draws with max_share {max_share} and min_spacing {min_spacing}: lower validate.min_spacing"
                          " or validate.references, or raise validate.max_share")
    return np.array(kept)


def best_by_objective(results: list[dict], search) -> dict:
    """The result whose domain scores the search's objective ranks first among `results` (search/objective.py
    `composite` with the results as their own reference set; domain floors are not applied)."""
    from megatron_demix.search.objective import composite, typical_noise

    targets = sorted(results[0]["domains"])
    values = np.array([[r["domains"][t] for t in targets] for r in results], dtype=np.float64)
    stderr = np.array([[r.get("domain_stderrs", {}).get(t, np.nan) for t in targets] for r in results], dtype=np.float64)
    objective = search.objective if search.objective in ("macro_rank", "standardized") else "macro_rank"
    score = composite(values, values, targets, objective, search.domain_weights, values, typical_noise(stderr))
    return results[int(np.argmax(score))]
