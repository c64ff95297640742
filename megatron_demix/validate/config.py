"""The `validate:` section: how `demix validate` measures proxy fidelity against trained references.

Reference models are trained from the base on sampled mixtures (beta general + (1 - beta) x the
mixture) for `reference_budget` x a component's iterations; the DeMix proxy of each mixture is
merged from the components; RegMix-style proxies are the same mixtures trained for
`proxy_budgets` x a component's iterations; two nulls train nothing (the components' own scores
interpolated by the mixture, and the distance to the token prior); `replicates` references are
trained again under another data-order seed (the noise ceiling). All are scored by the same
evaluation jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_demix.config.base import fail, require_at_least


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidateConfig:
    """Proxy fidelity (the paper's Table 2): references, DeMix proxies and trained proxies of the same mixtures."""

    references: int = 16
    """Reference mixtures (the paper: 96)."""
    seed: int = 7
    """Seeds the reference mixtures (apart from search.seed, so they are not the search's own pool)."""
    sampling: Literal["prior", "simplex"] = "prior"
    """Where the references come from: `prior`, the search's sampler around the token prior (the paper's
    choice); `simplex`, uniform over the whole simplex (a flat Dirichlet) with no share above `max_share`
    and every two at least `min_spacing` apart, so that no corner decides the ranking."""
    max_share: float = 1.0
    """`simplex`: no reference gives one candidate more than this share (keeps them off the vertices)."""
    min_spacing: float = 0.0
    """`simplex`: the least L1 distance between two references (draws closer to a kept one are rejected)."""
    replicates: int = 0
    """The first this many references (0, or at least 2) are trained once more with another data-order seed
    (training.seed + 1): their disagreement is the noise no proxy can beat (the ceiling)."""
    random_search: int = 0
    """Table 3's random search: this many mixtures of the search's pool, drawn at random (validate.seed),
    scored as merged proxies; the best by search.objective is trained like a reference and ranked. 0: none."""
    reference_budget: float = 1.0
    """A reference's iterations, as a multiple of a component's (the paper: its budget equals a component's)."""
    proxy_budgets: list[float] = field(default_factory=lambda: [0.125, 0.5])
    """Trained (RegMix-style) proxies per mixture, each budget a fraction of a component's iterations; empty: none."""
    bootstrap_samples: int = 2000
    """Paired resamples over mixtures (shared by every method and domain) for every interval."""
    mixture_quality: bool = True
    """Also train a reference-budget model on the token prior and one on the search's final mixture (when the search
    has finished) and rank them among the references (the paper's Table 3)."""
    merged_proxy_tokens: int = 0
    """Tokens charged per merged proxy (and per component scored for the interpolation null) in the compute
    column: its evaluation's cost in training tokens (the paper charges 0.01B: one evaluation, 0.3 GPU-hours,
    against 46 GPU-hours for 2B training tokens); the components' own training is always charged once."""

    def __post_init__(self):
        require_at_least(self, 2, "references")
        require_at_least(self, 0, "seed", "merged_proxy_tokens", "replicates", "random_search")
        require_at_least(self, 10, "bootstrap_samples")
        if self.replicates == 1:
            fail("replicates", "1 replicate gives no spread: set 0 (no noise ceiling) or at least 2")
        if self.replicates > self.references:
            fail("replicates", f"{self.replicates} is more than the {self.references} references it trains again")
        if not 0 < self.max_share <= 1 or self.min_spacing < 0:
            fail("max_share", f"max_share {self.max_share} must be in (0, 1] and min_spacing {self.min_spacing} >= 0")
        if self.reference_budget <= 0:
            fail("reference_budget", f"{self.reference_budget} must be > 0")
        bad = [b for b in self.proxy_budgets if not 0 < b]
        if bad or len(set(self.proxy_budgets)) != len(self.proxy_budgets):
            fail("proxy_budgets", f"{self.proxy_budgets}: fractions of a component's budget, each > 0 and distinct")
