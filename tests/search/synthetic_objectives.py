"""Synthetic mixture objectives with a known optimum, for benchmarks/search_bench.py and the tests.

    objective = OBJECTIVES["law-6"](seed)
    objective.domains(X)      # [n, D] noise-free domain scores (higher is better)
    objective.measure(X, rng) # the same plus the evaluation noise
    objective.f(X)            # the true composite: domain scores over their spread in the pool, equal weights
    objective.optimum         # argmax of f over the mixture space (numerically, many starts)
    objective.gain(x)         # (f(x) - f(prior)) / (f(optimum) - f(prior))

- `quadratic-3` / `quadratic-6`: two domains, each 1 - 4 |x - a_d|^2 around its own interior point
  a_d (random per seed): the composite optimum lies between them, inside the simplex.
- `law-3` / `law-6`: shaped like a data-mixing law: three domains (general, math, code), per-domain
  loss a_d + b_d exp(-sum_i t_di x_i) (diminishing returns; t from each candidate's domain and quality
  tier, perturbed per seed), plus a penalty for repeating a small dataset beyond twice its token share;
  score = -loss. At 6 candidates: math and code at three tiers each, the high tiers small.
- `law-6-uneven`: law-6 with a repetition cost and onset of its own per candidate.
Noise: each domain's measurement carries Gaussian noise of NOISE_SPREAD x its spread over the pool
(about 0.01 on a domain moving 0.3 across the pool, the level of the demo's evaluations).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

NOISE_SPREAD = 0.12
"""Evaluation noise as a fraction of each domain's standard deviation over the pool."""
CAP_MULTIPLE = 4.0
"""The optimum is sought within min(CAP_MULTIPLE x prior, 1) per candidate: the search space's caps."""
MIN_HEADROOM = 0.25
"""A seed whose prior is this close to the optimum (in pool spreads of f) is redrawn: the gain ratio
(f(answer) - f(prior)) / (f(optimum) - f(prior)) would measure noise, not the search."""


class SyntheticObjective:
    names: list[str]
    prior: np.ndarray

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        while True:
            self.build()
            reference = self.rng.dirichlet(self.prior * 4 + 0.05, 20000)
            values = self.domains(reference)
            self.scale = values.std(axis=0)
            self.noise = NOISE_SPREAD * self.scale
            self.optimum = self._maximise()
            if self.f(self.optimum)[0] - self.f(self.prior)[0] >= MIN_HEADROOM * self.f(reference).std():
                break

    def build(self) -> None:
        raise NotImplementedError

    def domains(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def measure(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.domains(X) + rng.normal(0, 1, (len(X), len(self.noise))) * self.noise

    def f(self, X: np.ndarray) -> np.ndarray:
        return (self.domains(np.atleast_2d(X)) / self.scale).mean(axis=1)

    def gain(self, x: np.ndarray) -> float:
        low, high = self.f(self.prior)[0], self.f(self.optimum)[0]
        return float((self.f(x)[0] - low) / (high - low))

    def _maximise(self) -> np.ndarray:
        k = len(self.prior)
        starts = np.concatenate([self.rng.dirichlet(np.ones(k), 24), np.eye(k) * 0.9 + 0.1 / k, self.prior[None]])
        constraint = {"type": "eq", "fun": lambda x: x.sum() - 1}
        best, best_value = None, -np.inf
        upper = np.minimum(CAP_MULTIPLE * self.prior, 1.0)
        for start in starts:
            start = np.minimum(start, upper)
            found = minimize(lambda x: -self.f(np.clip(x, 0, upper))[0], start, method="SLSQP", bounds=[(0, u) for u in upper],
                             constraints=[constraint], options={"ftol": 1e-12, "maxiter": 500})
            x = np.clip(found.x, 0, upper)
            if abs(x.sum() - 1) > 1e-6:
                continue
            value = self.f(x)[0]
            if value > best_value:
                best, best_value = x, value
        return best


class Quadratic(SyntheticObjective):
    k = 3

    def build(self) -> None:
        self.names = [f"c{i}" for i in range(self.k)]
        self.prior = self.rng.dirichlet(np.full(self.k, 3.0))
        self.centres = self.rng.dirichlet(np.full(self.k, 2.0), 2)

    def domains(self, X: np.ndarray) -> np.ndarray:
        return np.stack([1 - 4 * ((X - c) ** 2).sum(axis=1) for c in self.centres], axis=1)


class Quadratic6(Quadratic):
    k = 6


class MixingLaw(SyntheticObjective):
    """general / math / code losses of a data-mixing law; candidates are (domain, tier) pairs."""

    tiers = {"math": (1.0,), "code": (1.0,)}
    web_share = 0.4
    repeat_cost = 3.0
    """Loss per squared share beyond the onset (a scalar: every candidate's; or one per candidate)."""
    onset = 2.0
    """Repetition starts at this multiple of a candidate's token share (scalar or per candidate)."""

    def build(self) -> None:
        rows = [("web", 0.6)] if self.web_share else []
        rows += [(domain, quality) for domain, qualities in self.tiers.items() for quality in qualities]
        self.names = [f"{d}_{i}" if len(self.tiers.get(d, ())) > 1 else d for d, i in
                      ((d, sum(1 for e, _ in rows[:j] if e == d)) for j, (d, _) in enumerate(rows))]
        # Token shares: high tiers small, low tiers large (the paper's very_high tiers are the smallest).
        sizes = np.array([1.5 if d == "web" else 0.25 / q ** 2 for d, q in rows])
        self.prior = sizes * np.exp(self.rng.normal(0, 0.2, len(rows)))
        self.prior /= self.prior.sum()
        jitter = lambda: np.exp(self.rng.normal(0, 0.3))  # noqa: E731
        # t[d, i]: how much candidate i lowers domain d's loss (its own domain by quality, others a little).
        self.t = np.array([[(4.0 * q if d == domain else (1.2 if domain == "general" else 0.3)) * jitter()
                            for d, q in rows] for domain in ("general", "math", "code")])
        self.a = np.array([2.0, 1.5, 1.2])
        self.b = np.array([0.6, 1.0, 1.0]) * np.exp(self.rng.normal(0, 0.1, 3))

    def domains(self, X: np.ndarray) -> np.ndarray:
        loss = self.a + self.b * np.exp(-(X @ self.t.T))
        repeated = np.maximum(0.0, X - self.onset * self.prior) ** 2 @ np.full(self.prior.shape, self.repeat_cost)
        return -(loss + repeated[:, None])


class MixingLaw6(MixingLaw):
    tiers = {"math": (1.0, 0.6, 0.3), "code": (1.0, 0.6, 0.3)}
    web_share = 0.0


class MixingLaw6Uneven(MixingLaw6):
    """law-6 where repetition costs each candidate differently: its own cost (3 x lognormal(0, 0.7)) from its own
    onset (1.5 to 3 x its token share). Outside both search laws' families (one onset m for all candidates; in
    `law_one_cost` one cost too): the check that what the laws assume is not what makes law-6 easy."""

    def build(self) -> None:
        super().build()
        self.repeat_cost = 3.0 * np.exp(self.rng.normal(0, 0.7, len(self.prior)))
        self.onset = self.rng.uniform(1.5, 3.0, len(self.prior))


OBJECTIVES = {"quadratic-3": Quadratic, "quadratic-6": Quadratic6, "law-3": MixingLaw, "law-6": MixingLaw6,
              "law-6-uneven": MixingLaw6Uneven}
