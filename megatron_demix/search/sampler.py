"""Candidate mixtures: seeded, vectorised Dirichlet draws around the token prior (the reference's pool).

    space = MixtureSpace.build(prior, config)       # prior {candidate: share}, config a SearchConfig
    pool = space.sample(200_000, np.random.default_rng(42))     # [n, k], rows on the simplex

Per draw: a strength s among `strength_steps` log-spaced values, Dirichlet(centre * s) with centre =
prior^temperature renormalised; shares clipped to [min bound, min(cap_multiple * prior, max bound)]
with the excess spread over the others; shares below `zero_below` zeroed; rounded to the
`granularity` grid so that every row sums to exactly 1/granularity grid units (largest remainders,
never past a bound); rows equal on the grid dropped. A million candidates take a few seconds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from megatron_demix.config.base import ConfigError
from megatron_demix.search.config import SearchConfig


def resolve_prior(experiment) -> dict[str, float]:
    """The candidates' prior shares: `search.prior`, else the prepared token_prior.json; checked against the candidates."""
    names = [d.name for d in experiment.candidates]
    search = experiment.search
    if search.prior:
        raw, where = search.prior, "search.prior"
    else:
        path = experiment.paths.token_prior
        if not path.exists():
            raise ConfigError(f"search.prior is unset and {path} does not exist: run `demix prepare` first, or set "
                              "search.prior to {candidate: token count or share} in the experiment file")
        raw, where = json.loads(path.read_text()), str(path)
    missing, unknown = [n for n in names if n not in raw], sorted(set(raw) - set(names))
    if missing or unknown:
        raise ConfigError(f"{where}: must name exactly the candidate datasets {', '.join(names)}"
                          + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    unknown_bounds = sorted(set(search.bounds) - set(names))
    if unknown_bounds:
        raise ConfigError(f"search.bounds: unknown candidate(s) {', '.join(unknown_bounds)}; the candidates are {', '.join(names)}")
    total = sum(raw[n] for n in names)
    return {n: raw[n] / total for n in names}


def token_caps(experiment) -> dict[str, float] | None:
    """Candidate -> the largest share of the mixture its tokens allow in the next stage: (1 - beta) x share x
    target_tokens <= max_epochs x tokens (None without `search.target_tokens`). Tokens are the prepared
    counts (token_count.json), else `search.prior` when it holds counts."""
    search = experiment.search
    if search.target_tokens is None:
        return None
    names = [d.name for d in experiment.candidates]
    tokens = {}
    for name in names:
        path = experiment.paths.token_count(name)
        if path.exists():
            tokens[name] = float(json.loads(path.read_text())["tokens"])
        elif search.prior and sum(search.prior.values()) > 1.5:  # counts, not shares
            tokens[name] = float(search.prior[name])
        else:
            raise ConfigError(f"search.target_tokens needs each candidate's token count: {path} does not exist; run "
                              "`demix prepare` first, or give search.prior as token counts")
    candidate_tokens = (1 - experiment.training.beta) * search.target_tokens
    return {n: search.max_epochs * tokens[n] / candidate_tokens for n in names}


@dataclass(frozen=True)
class MixtureSpace:
    """The candidates, their prior and the per-candidate [lower, upper] shares every mixture respects."""

    names: list[str]
    prior: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    config: SearchConfig

    @classmethod
    def build(cls, prior: dict[str, float], config: SearchConfig, token_caps: dict[str, float] | None = None) -> "MixtureSpace":
        """`token_caps` (candidate -> largest share its tokens allow, `token_caps()`) replaces the reference's
        crude cap of `cap_multiple` x prior when the search knows the next stage's tokens."""
        names = list(prior)
        p = np.array([prior[n] for n in names], dtype=np.float64)
        p = p / p.sum()
        bounds = np.array([config.bounds.get(n, [0.0, 1.0]) for n in names], dtype=np.float64).reshape(len(names), 2)
        lower = bounds[:, 0]
        cap, cap_name = ((np.array([token_caps[n] for n in names]), "max_epochs x tokens / ((1 - beta) x target_tokens)")
                         if token_caps else (config.cap_multiple * p, "cap_multiple x prior"))
        upper = np.minimum(np.minimum(cap, 1.0), bounds[:, 1])
        if upper.sum() < 1 - 1e-9:
            detail = ", ".join(f"{n} {u:.4g}" for n, u in zip(names, upper))
            fix = "lower search.target_tokens or raise search.max_epochs" if token_caps else "raise search.cap_multiple"
            raise ConfigError(f"search: the largest allowed shares ({detail}; {cap_name}) sum to {upper.sum():.4g} < 1: "
                              f"{fix}, or raise the max of search.bounds")
        if np.any(lower > upper + 1e-12):
            bad = [n for n, lo, up in zip(names, lower, upper) if lo > up + 1e-12]
            raise ConfigError(f"search.bounds: the minimum share of {', '.join(bad)} exceeds its cap "
                              f"min({cap_name}, max): lower the minimum")
        return cls(names, p, lower, upper, config)

    @property
    def centre(self) -> np.ndarray:
        c = self.prior ** self.config.temperature
        return c / c.sum()

    def sample(self, n: int, rng: np.random.Generator, max_draws_factor: int = 20) -> np.ndarray:
        """`n` distinct mixtures [n, k] (fewer only if the constrained grid has fewer points)."""
        units = round(1 / self.config.granularity)
        hash_weights = rng.integers(1, 2**62, size=len(self.names)) | 1
        rows = np.zeros((0, len(self.names)), np.int64)
        seen = np.zeros(0, np.int64)  # sorted keys of `rows`
        drawn = 0
        while len(rows) < n and drawn < max_draws_factor * n:
            batch = max(1024, int((n - len(rows)) * 1.05))
            new = self._draw_on_grid(batch, rng, units)
            drawn += batch
            # Equal grid rows have equal keys (int64 products wrap around; a collision only drops a row).
            # Kept: each key's first draw, in draw order; only the new batch is sorted, not all rows again.
            keys = new @ hash_weights
            first = np.sort(np.unique(keys, return_index=True)[1])
            at = np.searchsorted(seen, keys[first]).clip(max=max(len(seen) - 1, 0))
            first = first[seen[at] != keys[first]] if len(seen) else first
            rows = np.concatenate([rows, new[first]])
            fresh = np.sort(keys[first])
            seen = np.insert(seen, np.searchsorted(seen, fresh), fresh)
        return rows[:n].astype(np.float64) / units

    def around(self, centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` mixtures drawn close around the rows of `centres` (Dirichlet at `local_concentration` x each
        centre, a little mass on its zero shares), within the same bounds and on the same grid."""
        if not len(centres) or n < 1:
            return np.zeros((0, len(self.names)))
        units = round(1 / self.config.granularity)
        alpha = centres[rng.integers(0, len(centres), size=n)] * self.config.local_concentration + 0.05
        grid = self._to_grid(self._dirichlet(alpha, rng), units)
        return np.unique(grid, axis=0).astype(np.float64) / units

    def exchanges(self, rows: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Every move of `step` share from one candidate to another, for each row: (neighbours [m, k], the
        index of the row each came from). Moves that would leave the bounds are left out; rows on the grid
        stay on it when `step` is a multiple of the granularity."""
        k = len(self.names)
        giver, taker = np.array([(i, j) for i in range(k) for j in range(k) if i != j]).T
        moves = np.zeros((len(giver), k))
        moves[np.arange(len(giver)), giver] -= step
        moves[np.arange(len(giver)), taker] += step
        neighbours = (rows[:, None, :] + moves[None, :, :]).reshape(-1, k)
        origin = np.repeat(np.arange(len(rows)), len(moves))
        inside = np.all((neighbours >= self.lower - 1e-12) & (neighbours <= self.upper + 1e-12), axis=1)
        return np.clip(neighbours[inside], 0.0, 1.0), origin[inside]

    def _draw_on_grid(self, n: int, rng: np.random.Generator, units: int) -> np.ndarray:
        c = self.config
        strengths = np.geomspace(c.strengths[0], c.strengths[1], c.strength_steps)
        alpha = self.centre[None, :] * rng.choice(strengths, size=n)[:, None]
        return self._to_grid(self._dirichlet(alpha, rng), units)

    @staticmethod
    def _dirichlet(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = rng.gamma(np.maximum(alpha, 1e-12))
        x /= np.maximum(x.sum(axis=1, keepdims=True), 1e-300)
        return np.nan_to_num(x, nan=0.0)

    def _to_grid(self, x: np.ndarray, units: int) -> np.ndarray:
        """Rows of the simplex -> integer grid units within the bounds (rows that cannot be are dropped)."""
        c = self.config
        x = project_to_box(x, self.lower, self.upper)
        x = np.where((x < c.zero_below) & (self.lower[None, :] <= 0), 0.0, x)
        x /= x.sum(axis=1, keepdims=True)
        grid = round_to_grid(x, units, self.lower, self.upper)
        return grid[grid.sum(axis=1) == units]


def project_to_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, max_iterations: int = 64) -> np.ndarray:
    """Clip rows to [lower, upper] and spread the excess (or deficit) over the entries still free, in proportion."""
    x = x.copy()
    todo = np.flatnonzero(np.any((x < lower) | (x > upper), axis=1))
    for _ in range(max_iterations):
        if not len(todo):
            break
        rows = np.clip(x[todo], lower, upper)
        gap = 1.0 - rows.sum(axis=1, keepdims=True)
        room = np.where(gap > 0, upper - rows, rows - lower)
        weight = np.where(room > 1e-15, np.maximum(rows, 1e-12), 0.0)
        rows += gap * weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
        x[todo] = rows
        todo = todo[np.any((rows < lower) | (rows > upper), axis=1) | (np.abs(gap[:, 0]) > 1e-13)]
    return np.clip(x, lower, upper)


def round_to_grid(x: np.ndarray, units: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Integer grid units per share, each row summing to `units`, each entry within one unit of x * units.

    Rounding the cumulative sums keeps every row's total exact; the few rows where that steps past a
    bound by one unit are put back inside and the unit moved to the share with the most room.
    """
    low_units = np.ceil(lower * units - 1e-9).astype(np.int64)
    high_units = np.floor(upper * units + 1e-9).astype(np.int64)
    cumulative = np.rint(np.cumsum(x, axis=1) * units).astype(np.int64)
    grid = np.diff(cumulative, axis=1, prepend=0)
    grid[:, -1] += units - cumulative[:, -1]
    bad = np.flatnonzero(np.any((grid < low_units) | (grid > high_units), axis=1))
    if len(bad):
        grid[bad] = _settle_within_bounds(grid[bad], units, low_units, high_units)
    return grid


def _settle_within_bounds(grid: np.ndarray, units: int, low_units: np.ndarray, high_units: np.ndarray) -> np.ndarray:
    """Clip to the bounds, then move the few units that takes away (or adds) to the entries with the most room."""
    grid = np.clip(grid, low_units, high_units)
    rows = np.arange(len(grid))
    for _ in range(grid.shape[1]):
        gap = units - grid.sum(axis=1)
        if not gap.any():
            break
        room = np.where(gap[:, None] > 0, high_units - grid, grid - low_units)
        column = room.argmax(axis=1)
        grid[rows, column] += np.sign(gap) * np.minimum(np.abs(gap), room[rows, column])
    return grid
