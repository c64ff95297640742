"""The `validate:` section: how `demix validate` measures proxy fidelity against trained references.

Reference models are trained from the base on sampled mixtures (beta general + (1 - beta) x the
mixture) for `reference_budget` x a component's iterations; the DeMix proxy of each mixture is
merged from the components; RegMix-style proxies are the same mixtures trained for
`proxy_budgets` x a component's iterations. All are scored by the same evaluation jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from megatron_demix.config.base import fail, require_at_least


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidateConfig:
    """Proxy fidelity (the paper's Table 2): references, DeMix proxies and trained proxies of the same mixtures."""

    references: int = 16
    """Reference mixtures, drawn from the search's sampler around the prior (the paper: 96)."""
    seed: int = 7
    """Seeds the reference mixtures (apart from search.seed, so they are not the search's own pool)."""
    reference_budget: float = 1.0
    """A reference's iterations, as a multiple of a component's (the paper: its budget equals a component's)."""
    proxy_budgets: list[float] = field(default_factory=lambda: [0.125, 0.5])
    """Trained (RegMix-style) proxies per mixture, each budget a fraction of a component's iterations; empty: none."""
    bootstrap_samples: int = 1000
    """Resamples over mixtures for the confidence intervals of every metric."""
    mixture_quality: bool = True
    """Also train a reference-budget model on the token prior and one on the search's final mixture (when the search
    has finished) and rank them among the references (the paper's Table 3)."""
    merged_proxy_tokens: int = 0
    """Tokens charged per merged proxy in the compute column (the paper charges 0.01B for its evaluation); the
    components' own training is always charged."""

    def __post_init__(self):
        require_at_least(self, 2, "references")
        require_at_least(self, 0, "seed", "merged_proxy_tokens")
        require_at_least(self, 10, "bootstrap_samples")
        if self.reference_budget <= 0:
            fail("reference_budget", f"{self.reference_budget} must be > 0")
        bad = [b for b in self.proxy_budgets if not 0 < b]
        if bad or len(set(self.proxy_budgets)) != len(self.proxy_budgets):
            fail("proxy_budgets", f"{self.proxy_budgets}: fractions of a component's budget, each > 0 and distinct")
