"""The `search:` section: sampling mixtures, rounds of proxies, the predictor, the objective and the answer.

The sampling and the rounds follow the DeMix reference code (shared/notes/demix-method.md): a Dirichlet pool
around the token prior (prior^0.7, 15 strengths in [0.5, 5], caps 4 x prior, grid 2e-4), rounds n, n/2,
n/4; its LightGBM predictor (300 iterations, learning rate 0.02, seed 42; leaves sized to the points) and
its answer, the mean of the top-k predicted mixtures, are options. By default: a data-mixing-law predictor
per target, the pool's best climbed uphill on it, its best predicted as the answer (benchmarks/RESULTS-search.md
measures why). Beyond the reference too: the `standardized` objective (magnitudes count), per-domain floors,
token-budget caps (`target_tokens`, `max_epochs`), Gaussian-process and quadratic predictors, the `ei`
acquisition, and the answer's check against the best evaluated mixture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megatron_demix.config.base import fail
from megatron_demix.search.acquisition import ACQUISITIONS
from megatron_demix.search.predictor import MODELS


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

    predictor: Literal[("auto", *MODELS)] = "law"
    """`law` (the default: a data-mixing law, c + b exp(x . w) minus a learned repetition cost beyond m x a
    candidate's token share; it extrapolates toward an untried corner with diminishing returns, which the
    pool-bound kinds cannot: benchmarks/RESULTS-search.md), `law_one_cost` (the law with one repetition cost for
    every candidate instead of one each: fewer parameters, better on the synthetic benchmarks, worse where the
    optimum sits at different multiples of the token shares), `lightgbm` (the paper's; leaves sized to the points), `gp` (a Gaussian process with a learned noise
    level: smooth, uncertainty-aware, cautious away from the data), `quadratic` (Scheffe's mixture model,
    penalty chosen by leave-one-out), `ridge` (the reference's small-n model), or `auto`: per target, whichever of `auto_kinds` has the higher cross-validated Spearman. benchmarks/RESULTS-search.md compares them."""
    auto_kinds: list[str] = field(default_factory=lambda: ["gp", "quadratic", "lightgbm"])
    """The kinds `predictor: auto` chooses among."""
    ridge_alpha: float = 0.5
    """L2 penalty of the `ridge` regressor (the reference code's small-n fallback used 0.5)."""
    cv_folds: int = 5
    """Folds of the cross-validated Spearman (leave-one-out when fewer points than 2 x folds)."""
    acquisition: Literal[tuple(ACQUISITIONS)] = "top_random"
    """How later rounds pick: `top_random` (the paper: random among the top predicted), `ei` (expected
    improvement of the composite under the predictor's uncertainty: the GP's own, else a bootstrap
    ensemble's), `top_spread` (the best predicted, spread apart) or `ucb` (ensemble mean + kappa x std);
    all but `top_random` keep picks at least `min_distance` apart."""
    acquisition_top: int = 1024
    """`top_random` draws from this many best predicted pool mixtures not yet evaluated."""
    ensemble_size: int = 8
    """Bootstrap regressors per target, for `ucb`, for `ei` without a GP and for the final mixture's uncertainty."""
    ucb_kappa: float = 1.0
    """UCB = mean + kappa * std of the ensemble's composite score."""
    min_distance: float = 0.05
    """`ei`, `ucb`, `top_spread`: picks are at least this L1 distance from each other and from evaluated mixtures."""
    local_candidates: int = 0
    """Besides the pool, this many mixtures drawn close around the best predicted ones (Dirichlet at
    `local_concentration` x their shares, same bounds and grid), so that `argmax`, `ei` and `top_spread`
    can land between the pool's points (e.g. 4096). 0: the pool only (the reference), the default: with
    `top_random` they crowd its draws around the current best (benchmarks/RESULTS-search.md: 0.62 vs 0.79
    at six candidates)."""
    climb_starts: int = 32
    """Besides the pool, this many of the best predicted candidates climbed uphill on the surrogate by
    exchanges of share between two candidates, within the bounds (0: none, the reference). Their tops join
    the candidates that the acquisition and `argmax` choose from: the pool is drawn around the prior and
    rarely holds an optimum at 3-4 x a small dataset's share."""
    local_concentration: float = 200.0
    """How tightly the local candidates sit around their centre (about 1/sqrt of it per share, relative)."""
    objective: str = "standardized"
    """`standardized` (per-domain scores over their spread among the evaluated mixtures, weighted mean:
    magnitudes count), `macro_rank` (the paper's: per-domain percentile ranks, weighted mean; a large loss
    on one domain can buy a tiny gain on another) or one metric's name."""
    domain_weights: dict[str, float] = field(default_factory=dict)
    """Domain -> weight in the composite; empty: equal weights."""
    domain_floors: dict[str, float] = field(default_factory=dict)
    """Domain -> largest allowed drop below the token prior's predicted score, in that domain's units (e.g.
    `general: 0.01`): mixtures predicted below it are never proposed nor answered."""
    target_tokens: float | None = None
    """Tokens of the next training stage (the one the answer is for). With `max_epochs` it caps each
    candidate: (1 - beta) x share x target_tokens <= max_epochs x its tokens (no dataset seen more than
    `max_epochs` times)."""
    max_epochs: float | None = None
    """Most passes over any candidate in the next stage (with `target_tokens`; practitioners use about 4)."""
    final: Literal["argmax", "top_k_mean"] = "argmax"
    """The answer before its check: `argmax` (the default: the best predicted feasible candidate, the climbed
    ones included) or `top_k_mean` (the reference: the mean of the top-k predicted feasible pool mixtures;
    it damps a noisy surrogate such as LightGBM's, but pulls an optimum on a cap back toward the prior)."""
    final_tolerance: float = 2.0
    """The evaluated answer must not measure below the best evaluated mixture by more than this many
    standard errors of their difference; otherwise the best evaluated mixture is the answer (the report says so)."""

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
        self._validate_answer()
        if any(w < 0 for w in self.domain_weights.values()) or (self.domain_weights and sum(self.domain_weights.values()) <= 0):
            fail("domain_weights", f"{self.domain_weights}: weights must be >= 0 with a positive sum")

    def _validate_answer(self):
        unknown = sorted(set(self.auto_kinds) - set(MODELS))
        if unknown or not self.auto_kinds:
            fail("auto_kinds", f"{self.auto_kinds}: choose one or more of {', '.join(MODELS)}")
        if (self.target_tokens is None) != (self.max_epochs is None):
            fail("target_tokens", "set both search.target_tokens and search.max_epochs (the cap is max_epochs x a "
                 "candidate's tokens / target_tokens), or neither")
        if self.target_tokens is not None and not (self.target_tokens > 0 and self.max_epochs > 0):
            fail("target_tokens", f"{self.target_tokens} and max_epochs {self.max_epochs} must be > 0")
        if any(not math.isfinite(v) or v < 0 for v in self.domain_floors.values()):
            fail("domain_floors", f"{self.domain_floors}: each floor is a drop (>= 0) below the prior's predicted score")
        if min(self.local_candidates, self.climb_starts, self.final_tolerance) < 0 or self.local_concentration <= 0:
            fail("local_candidates", "local_candidates, climb_starts and final_tolerance must be >= 0, local_concentration > 0")

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
