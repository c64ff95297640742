"""The search's decisions, on arrays only: fit the surrogate, propose a round, choose and check the answer.

    evidence = Evidence(X, Y, targets, stderr)                  # what was measured so far
    surrogate = Surrogate.fit(evidence, pool, prior, config)   # predictor + objective + floors
    rows, predicted, scores = propose(surrogate, pool, space, size, rng)   # the next round's mixtures
    answer = choose_answer(surrogate, pool, space, rng)                    # the predicted best mixture
    answer, check = check_answer(refit, answer, index)  # refit on the evidence with the answer's own measurement

No files and no jobs: the driver (driver.py) wraps these with its state directory and array jobs, and
benchmarks/search_bench.py runs them in-process on synthetic objectives, so what is measured there is
exactly what a search does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from megatron_demix.config.base import ConfigError
from megatron_demix.search.acquisition import ACQUISITIONS, Candidates
from megatron_demix.search.config import SearchConfig
from megatron_demix.search.objective import composite, linear_coefficients, spread, typical_noise, weights_for
from megatron_demix.search.predictor import GaussianProcess, Predictor, fit_ensemble, fit_predictor
from megatron_demix.search.sampler import MixtureSpace

LOCAL_CENTRES = 32
"""The local candidates are drawn around this many of the best predicted feasible mixtures."""
CLIMB_STEPS = (0.05, 0.02, 0.01, 0.005, 0.002)
"""Exchange steps of the climb, as shares (rounded to the grid), coarse to fine."""
CLIMB_ITERATIONS = 40
"""At most this many uphill moves per step size."""


@dataclass
class Evidence:
    """Every successful evaluation: mixtures [n, k], measured targets [n, T] (higher is better) and their
    standard errors [n, T] where the evaluations gave them."""

    X: np.ndarray
    Y: np.ndarray
    targets: list[str]
    stderr: np.ndarray | None = None


@dataclass
class Surrogate:
    """The fitted predictor with the objective that turns its predictions into one composite score."""

    predictor: Predictor
    config: SearchConfig
    evidence: Evidence
    reference: np.ndarray
    """Predictions on the pool: the reference set of `macro_rank`'s percentile ranks."""
    floor: np.ndarray
    """Per target, the lowest predicted value a proposal or answer may have (-inf: no floor)."""
    prior_predicted: np.ndarray
    members: list[Predictor]

    @classmethod
    def fit(cls, evidence: Evidence, pool: np.ndarray, prior: np.ndarray, config: SearchConfig,
            ensemble: bool = False, cross_validate: bool = True) -> "Surrogate":
        predictor = fit_predictor(evidence.X, evidence.Y, evidence.targets, config, cross_validate=cross_validate, prior=prior)
        analytic = predictor.has_std and config.objective != "macro_rank"  # the composite's spread follows from the GP's
        acquisition = ACQUISITIONS[config.acquisition]
        needs = ensemble or acquisition.ensemble or (acquisition.uncertainty and not analytic)
        members = fit_ensemble(evidence.X, evidence.Y, predictor, config) if needs else []
        prior_predicted = predictor.predict(prior[None, :])[0]
        unknown = sorted(set(config.domain_floors) - set(evidence.targets))
        if unknown:
            raise ConfigError(f"search.domain_floors: unknown domain(s) {', '.join(unknown)}; the domains are "
                              f"{', '.join(evidence.targets)}")
        floor = np.array([prior_predicted[t] - config.domain_floors[name] if name in config.domain_floors else -np.inf
                          for t, name in enumerate(evidence.targets)])
        return cls(predictor, config, evidence, predictor.predict(pool), floor, prior_predicted, members)

    @property
    def noise(self) -> np.ndarray | None:
        """Per target, the typical standard error of one evaluation (None where the evaluations gave none)."""
        return typical_noise(self.evidence.stderr)

    def score(self, values: np.ndarray) -> np.ndarray:
        return composite(values, self.reference, self.evidence.targets, self.config.objective,
                         self.config.domain_weights, measured=self.evidence.Y, noise=self.noise)

    def coefficients(self) -> np.ndarray | None:
        return linear_coefficients(self.evidence.targets, self.config.objective, self.config.domain_weights,
                                   self.evidence.Y, self.noise)

    def score_std(self, rows: np.ndarray) -> np.ndarray | None:
        """The composite's standard deviation under the Gaussian process (objectives linear in the targets)."""
        coefficients = self.coefficients()
        if coefficients is None or not self.predictor.has_std:
            return None
        _, std = self.predictor.predict_with_std(rows)
        return np.sqrt((std ** 2) @ (coefficients ** 2))

    def feasible(self, values: np.ndarray) -> np.ndarray:
        return np.all(values >= self.floor, axis=1)

    def candidates(self, pool: np.ndarray, space: MixtureSpace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, predictions, composite scores) of the pool plus the local candidates around its best feasible
        mixtures; infeasible rows (below a domain floor) score -inf."""
        scores = np.where(self.feasible(self.reference), self.score(self.reference), -np.inf)
        rows, values = pool, self.reference
        if self.config.local_candidates:
            centres = pool[np.argsort(-scores, kind="stable")[:LOCAL_CENTRES]]
            local = space.around(centres, self.config.local_candidates, rng)
            rows, values = np.concatenate([pool, local]), np.concatenate([values, self.predictor.predict(local)])
            scores = np.where(self.feasible(values), self.score(values), -np.inf)
        if self.config.climb_starts:
            starts = rows[np.argsort(-scores, kind="stable")[: self.config.climb_starts]]
            climbed = np.unique(self.climb(starts, space), axis=0)
            climbed_values = self.predictor.predict(climbed)
            rows, values = np.concatenate([rows, climbed]), np.concatenate([values, climbed_values])
            scores = np.concatenate([scores, np.where(self.feasible(climbed_values), self.score(climbed_values), -np.inf)])
        return rows, values, scores

    def climb(self, starts: np.ndarray, space: MixtureSpace) -> np.ndarray:
        """Each start moved uphill on the predicted composite by exchanges of share between two candidates
        (coarse steps first, down to the grid): the pool is drawn around the prior, so an optimum at 3-4x a
        small dataset's prior share is rarely in it (1 draw in 3,000 within 10% of the optimum at six
        candidates), while the surrogate can say which way is up."""
        rows = starts.copy()
        units = round(1 / self.config.granularity)
        best = self._feasible_score(rows)
        for step in CLIMB_STEPS:
            step = max(round(step * units), 1) / units
            for _ in range(CLIMB_ITERATIONS):
                neighbours, origin = space.exchanges(rows, step)
                scores = self._feasible_score(neighbours)
                order = np.lexsort((-scores, origin))  # per origin, best first
                first = order[np.r_[True, origin[order][1:] != origin[order][:-1]]]
                better = first[scores[first] > best[origin[first]] + 1e-12]
                if not len(better):
                    break
                rows[origin[better]] = neighbours[better]
                best[origin[better]] = scores[better]
        return np.round(rows * units) / units

    def _feasible_score(self, rows: np.ndarray) -> np.ndarray:
        values = self.predictor.predict(rows)
        return np.where(self.feasible(values), self.score(values), -np.inf)

    @cached_property
    def learned_noise(self) -> np.ndarray:
        """Per target, the evaluation noise a Gaussian process learns from the evidence (the predictor's own
        when it is one): what the check uses where the evaluations report no standard errors."""
        learned = self.predictor.noise_std()
        if learned is None:
            e = self.evidence
            learned = np.array([GaussianProcess(self.config.seed + t).fit(e.X, e.Y[:, t]).noise_std for t in range(e.Y.shape[1])])
        return learned

    def composite_noise(self, stderr_rows: list[np.ndarray | None]) -> float:
        """The standard error of a difference of two measured composites (rows: the two mixtures' target
        stderrs, None where unknown: the learned noise instead)."""
        coefficients = self.coefficients()
        if coefficients is None:  # ranks: judge the gap on the standardised scale
            coefficients = weights_for(self.evidence.targets, self.config.domain_weights) / spread(self.evidence.Y, self.noise)[1]
        rows = [self.learned_noise if row is None else np.asarray(row) for row in stderr_rows]
        return float(np.sqrt(sum((row ** 2) @ (coefficients ** 2) for row in rows)))


def evaluated_mask(rows: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows equal (on the grid) to an evaluated mixture."""
    mask = np.zeros(len(rows), dtype=bool)
    for mixture in X:
        mask |= np.abs(rows - mixture).sum(axis=1) < 1e-9
    return mask


def propose(surrogate: Surrogate, pool: np.ndarray, space: MixtureSpace, size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The next round: (mixtures [size, k], their predicted targets, their composite scores)."""
    config, evidence = surrogate.config, surrogate.evidence
    rows, values, scores = surrogate.candidates(pool, space, rng)
    fitted = surrogate.predictor.predict(evidence.X)
    fitted_scores = np.where(surrogate.feasible(fitted), surrogate.score(fitted), -np.inf)
    ensemble_scores = (np.stack([surrogate.score(m.predict(rows)) for m in surrogate.members])
                       if surrogate.members else None)
    std = surrogate.score_std(rows) if ACQUISITIONS[config.acquisition].uncertainty else None
    candidates = Candidates(rows, scores, ensemble_scores, evaluated_mask(rows, evidence.X) | ~np.isfinite(scores),
                            evidence.X, score_std=std, incumbent=float(fitted_scores.max()) if np.isfinite(fitted_scores).any() else None)
    chosen = ACQUISITIONS[config.acquisition].pick(candidates, size, rng, config)
    return rows[chosen], values[chosen], scores[chosen]


@dataclass
class Answer:
    mixture: np.ndarray
    rule: str
    """How it was chosen: `argmax` or `top_k_mean` (the predicted best), `best_evaluated` (the check below)."""
    reason: str


def choose_answer(surrogate: Surrogate, pool: np.ndarray, space: MixtureSpace, rng: np.random.Generator) -> Answer:
    """The predicted best mixture: the best feasible candidate (`argmax`), or the mean of the top-k pool
    mixtures (`top_k_mean`, the reference's rule). When the top-k sit on one spot (mean L1 distance to their
    mean below 0.75 x top_k x granularity; k grid neighbours on a line, as a flat prediction at a corner of
    the simplex gives, are at k x granularity / 2), their mean is an artifact of those two settings, not an
    answer: the best predicted is taken."""
    config = surrogate.config
    if config.final == "top_k_mean":
        scores = np.where(surrogate.feasible(surrogate.reference), surrogate.score(surrogate.reference), -np.inf)
        top = np.argsort(-scores, kind="stable")[: config.top_k]
        top = top[np.isfinite(scores[top])]
        if len(top):
            mixture = pool[top].mean(axis=0)
            if np.abs(pool[top] - mixture).sum(axis=1).mean() >= 0.75 * len(top) * config.granularity:
                return Answer(mixture / mixture.sum(), "top_k_mean", f"the mean of the top {len(top)} predicted feasible pool mixtures")
    rows, _, scores = surrogate.candidates(pool, space, rng)
    why = ("; the top-k sit on one spot (their mean would only reflect top_k x granularity)"
           if config.final == "top_k_mean" else "")
    if not np.isfinite(scores).any():
        best = int(np.argmax(surrogate.score(surrogate.predictor.predict(surrogate.evidence.X))))
        return Answer(surrogate.evidence.X[best], "best_evaluated",
                      "no candidate meets the domain floors: the evaluated mixture the predictor rates highest")
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)  # a tree's flat top: its centre, not one end of it
    where = f"{len(rows)} candidate mixtures ({len(pool)} pool, {len(rows) - len(pool)} local or climbed)"
    if len(tied) > 1:
        return Answer(rows[tied].mean(axis=0), "argmax", f"the centre of the {len(tied)} of {where} tied for the best prediction{why}")
    return Answer(rows[tied[0]], "argmax", f"the best predicted of {where}{why}")


def check_answer(surrogate: Surrogate, answer: Answer, answer_index: int) -> tuple[Answer, dict]:
    """Keep the evaluated answer unless it measured below the best evaluated mixture by more than
    `final_tolerance` standard errors of the difference; then answer with the evaluated mixture that the
    fit on everything (the answer's measurement included) rates highest: its smoothed score is less
    flattered by noise than the single best measurement. `surrogate` is that fit; `answer_index` the
    answer's row in its evidence."""
    evidence, config = surrogate.evidence, surrogate.config
    measured = surrogate.score(evidence.Y)
    best = int(np.argmax(measured))
    stderr = (lambda i: None if evidence.stderr is None or not np.isfinite(evidence.stderr[i]).all() else evidence.stderr[i])
    noise = surrogate.composite_noise([stderr(answer_index), stderr(best)])
    gap = float(measured[answer_index] - measured[best])
    check = {"measured": float(measured[answer_index]), "best_measured": float(measured[best]), "best_index": best,
             "gap": gap, "noise": noise, "z": gap / noise if noise else None, "tolerance": config.final_tolerance}
    if best == answer_index or gap >= -config.final_tolerance * noise:
        check["kept"] = True
        return answer, check
    fitted = surrogate.predictor.predict(evidence.X)
    fitted_scores = np.where(surrogate.feasible(fitted), surrogate.score(fitted), -np.inf)
    chosen = int(np.argmax(fitted_scores))
    check.update(kept=False, chosen_index=chosen)
    return Answer(evidence.X[chosen], "best_evaluated",
                  f"the predicted best measured {gap:+.3f} below the best evaluated mixture ({gap / noise:+.1f} standard "
                  f"errors, beyond the tolerance of {config.final_tolerance}): the answer is the evaluated mixture the "
                  "final fit rates highest"), check
