"""The `search:` section: sampling mixtures, rounds of proxies, the predictor and the final answer.

Defaults reproduce the DeMix reference code (shared/notes/demix-method.md): a Dirichlet pool
around the token prior (prior^0.7, 15 strengths in [0.5, 5], caps 4 x prior, grid 2e-4), rounds
n, n/2, n/4, one LightGBM regressor per target (300 iterations, learning rate 0.02, seed 42),
the macro-average of per-domain percentile ranks, and the mean of the top-128 predicted mixtures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megatron_demix.config.base import fail


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchConfig:
    """The reference code's search: Dirichlet pool around the token prior, rounds n, n/2, n/4."""

    pool_size: int = 200_000
    """Distinct candidate mixtures the predictor scores (the reference keeps 200k of 512k draws)."""
    first_round: int = 32
    """Proxies in round 1; later rounds halve it (the paper's n, n/2, n/4)."""
    rounds: int = 3
    """Number of rounds of proxies (with `first_round`: n, n/2, n/4, ...)."""
    round_sizes: list[int] = field(default_factory=list)
    """Proxies per round, overriding `first_round` / `rounds` (e.g. [16, 8, 4]); empty: n, n/2, n/4, ..."""
    top_k: int = 128
    """The final mixture is the mean of the top-k predicted mixtures (paper 128, its code 1280)."""
    lgbm_iterations: int = 300
    """Boosting iterations of each LightGBM regressor (the paper's 300)."""
    lgbm_learning_rate: float = 0.02
    """LightGBM learning rate (the paper's 0.02; its code used 0.01)."""
    seed: int = 42
    """Seeds the pool, the round draws, the cross-validation folds and the regressors."""

    prior: dict[str, float] = field(default_factory=dict)
    """Candidate -> token count or share (normalised here); empty: the prepared data's token_prior.json."""
    bounds: dict[str, list[float]] = field(default_factory=dict)
    """Candidate -> [min, max] share every sampled mixture respects (e.g. `code: [0.05, 0.4]`)."""
    temperature: float = 0.7
    """Dirichlet centre = prior^temperature renormalised (< 1 flattens toward uniform)."""
    strengths: list[float] = field(default_factory=lambda: [0.5, 5.0])
    """[low, high] Dirichlet concentration scale; draws use `strength_steps` log-spaced values in it."""
    strength_steps: int = 15
    """How many log-spaced concentration strengths in `strengths` the draws pick from (the reference's 15)."""
    cap_multiple: float = 4.0
    """Each candidate's share is capped at min(cap_multiple * prior, 1) (the excess goes to the others)."""
    granularity: float = 2e-4
    """Shares are multiples of this (1/granularity must be an integer); exact duplicates on this grid are dropped."""
    zero_below: float = 2e-4
    """Shares below this become 0 before rounding (the reference's 2e-4)."""

    predictor: Literal["auto", "lightgbm", "ridge", "quadratic"] = "auto"
    """`auto`: per target, whichever of LightGBM, Ridge and `quadratic` (Ridge on the shares and their
    pairwise products, which can put an optimum inside the simplex) has the higher cross-validated Spearman."""
    ridge_alpha: float = 0.5
    """L2 penalty of the Ridge regressor (the reference code's small-n fallback used 0.5)."""
    cv_folds: int = 5
    """Folds of the cross-validated Spearman (leave-one-out when fewer points than 2 x folds)."""
    acquisition: Literal["top_random", "ucb"] = "top_random"
    """How later rounds pick: `top_random` (paper: random among the top predicted) or `ucb`
    (bootstrap ensemble, upper confidence bound, a minimum L1 distance between picks)."""
    acquisition_top: int = 1024
    """`top_random` draws from this many best predicted pool mixtures not yet evaluated."""
    ensemble_size: int = 8
    """Bootstrap regressors per target, for `ucb` and for the final mixture's uncertainty."""
    ucb_kappa: float = 1.0
    """UCB = mean + kappa * std of the ensemble's composite score."""
    min_distance: float = 0.05
    """`ucb`: picks are at least this L1 distance from each other and from evaluated mixtures."""
    objective: str = "macro_rank"
    """`macro_rank` (per-domain percentile ranks over the pool, weighted mean) or one metric's name."""
    domain_weights: dict[str, float] = field(default_factory=dict)
    """Domain -> weight in `macro_rank`; empty: equal weights."""

    mixtures_per_task: int = 1
    """Mixtures one array task evaluates in a row (amortises loading the model and the harness)."""
    max_parallel: int | None = None
    """At most this many evaluation tasks run at once (sbatch --array=...%P); unset: no limit."""
    max_retries: int = 2
    """A mixture whose evaluation fails is retried this many times before it counts as failed."""
    min_results: int | None = None
    """Fewest successful evaluations a round must return for the search to go on; unset: half the round."""
    evaluate_final: bool = True
    """Build and evaluate the final mixture's own proxy (one more evaluation) for its measured score."""
    poll_seconds: float = 10.0
    """Longest wait between two polls of the scheduler (polls start at 0.5 s and back off)."""

    def __post_init__(self):
        for name in ("pool_size", "first_round", "rounds", "top_k", "lgbm_iterations", "strength_steps",
                     "acquisition_top", "ensemble_size", "mixtures_per_task"):
            if getattr(self, name) < 1:
                fail(name, f"{getattr(self, name)} must be >= 1")
        if any(size < 1 for size in self.round_sizes):
            fail("round_sizes", f"{self.round_sizes}: every round needs at least one mixture")
        if self.lgbm_learning_rate <= 0 or self.ridge_alpha < 0:
            fail("lgbm_learning_rate", "must be > 0 (and ridge_alpha >= 0)")
        if self.cv_folds < 2:
            fail("cv_folds", f"{self.cv_folds} must be >= 2")
        if self.max_retries < 0:
            fail("max_retries", f"{self.max_retries} must be >= 0")
        for name in ("max_parallel", "min_results"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                fail(name, f"{getattr(self, name)} must be >= 1 (or unset)")
        if self.poll_seconds <= 0 or self.ucb_kappa < 0 or self.min_distance < 0:
            fail("poll_seconds", "poll_seconds must be > 0, ucb_kappa and min_distance >= 0")
        self._validate_sampler()
        self._validate_prior_and_bounds()
        if any(w < 0 for w in self.domain_weights.values()) or (self.domain_weights and sum(self.domain_weights.values()) <= 0):
            fail("domain_weights", f"{self.domain_weights}: weights must be >= 0 with a positive sum")

    def _validate_sampler(self):
        if not 0 < self.temperature <= 10:
            fail("temperature", f"{self.temperature} must be in (0, 10]")
        if len(self.strengths) != 2 or not 0 < self.strengths[0] <= self.strengths[1]:
            fail("strengths", f"{self.strengths} must be [low, high] with 0 < low <= high")
        if self.cap_multiple <= 0:
            fail("cap_multiple", f"{self.cap_multiple} must be > 0")
        units = 1 / self.granularity if self.granularity > 0 else 0
        if not 1e-6 <= self.granularity <= 0.1 or abs(units - round(units)) > 1e-6 * units:
            fail("granularity", f"{self.granularity} must lie in [1e-6, 0.1] with 1/granularity an integer (e.g. 2e-4, 1e-3, 0.01)")
        if not 0 <= self.zero_below < 0.5:
            fail("zero_below", f"{self.zero_below} must be in [0, 0.5)")

    def _validate_prior_and_bounds(self):
        if any(not math.isfinite(v) or v < 0 for v in self.prior.values()) or (self.prior and sum(self.prior.values()) <= 0):
            fail("prior", f"{self.prior}: token counts or shares must be finite, >= 0, with a positive sum")
        for name, pair in self.bounds.items():
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1] <= 1:
                fail(f"bounds.{name}", f"{pair} must be [min, max] with 0 <= min <= max <= 1")
        low = sum(pair[0] for pair in self.bounds.values())
        if low > 1 + 1e-9:
            fail("bounds", f"the minimum shares sum to {low:.4g} > 1: no mixture can satisfy them; lower some minimum")
        if self.prior and self.bounds:
            unknown = sorted(set(self.bounds) - set(self.prior))
            if unknown:
                fail("bounds", f"unknown candidate(s) {', '.join(unknown)}; search.prior names {', '.join(self.prior)}")

    @property
    def sizes(self) -> list[int]:
        """Proxies per round: `round_sizes`, or first_round, first_round/2, ... (`rounds` of them)."""
        return list(self.round_sizes) or [max(1, self.first_round // 2**i) for i in range(self.rounds)]
