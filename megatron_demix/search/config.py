"""The `search:` section: sampling mixtures, rounds of proxies and the LightGBM predictor."""
from __future__ import annotations

from dataclasses import dataclass

from megatron_demix.config.base import fail


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchConfig:
    """The reference code's search: Dirichlet pool around the token prior, rounds n, n/2, n/4."""

    pool_size: int = 200_000
    first_round: int = 32
    """Proxies in round 1; later rounds halve it (the paper's n, n/2, n/4)."""
    rounds: int = 3
    top_k: int = 128
    """The final mixture is the mean of the top-k predicted mixtures."""
    lgbm_iterations: int = 300
    lgbm_learning_rate: float = 0.02
    seed: int = 42

    def __post_init__(self):
        for name in ("pool_size", "first_round", "rounds", "top_k", "lgbm_iterations"):
            if getattr(self, name) < 1:
                fail(name, f"{getattr(self, name)} must be >= 1")
