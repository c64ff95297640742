"""The surrogate: one regressor per target (a domain score or a metric), mixture shares as features.

    predictor = fit_predictor(X, Y, targets, config)      # X [n, k] shares, Y [n, T] measured
    predictor.predict(pool)                                # [m, T]
    predictor.cv_spearman                                  # {target: {kind: rho}} out-of-fold

Kinds are a registry (`gp`, `quadratic`, `lightgbm`, `ridge`); `auto` keeps, per target, the kind (of
`search.auto_kinds`) with the higher k-fold (leave-one-out on few points) cross-validated Spearman
between out-of-fold predictions and measured scores: the points a model is fitted on never score it. `fit_ensemble` refits the
chosen kinds on bootstrap resamples, for an uncertainty (the spread of the members' predictions).
On a pool, the LightGBM targets are predicted together through `TreeTables` (the same predictions
as LightGBM's, about 10 times faster: search/tree_tables.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from megatron_demix.search.tree_tables import TreeTables

if TYPE_CHECKING:  # search/config.py takes its choices from MODELS below
    from megatron_demix.search.config import SearchConfig


def lightgbm_params(n: int, config: SearchConfig, seed: int) -> dict:
    """The paper's 300 iterations / lr 0.02, with leaf settings that let trees split on tens of points.

    LightGBM's defaults (min_data_in_leaf 20, 31 leaves) need 40 rows for a single split, so on the
    paper's 16-56 first-round points every tree is one leaf predicting mean(y) (LightGBM issue #5783;
    the reference code's fits are all constant there). A leaf of n/8 rows (2 at least, the default
    20 at most) and n/4 leaves (4..31) keep splits possible on 16 points and reach the defaults near
    160-250 points; min_data_in_bin 1 lets the histogram bins follow the few distinct values.
    """
    return dict(n_estimators=config.lgbm_iterations, learning_rate=config.lgbm_learning_rate, random_state=seed,
                min_child_samples=int(np.clip(n // 8, 2, 20)), num_leaves=int(np.clip(n // 4, 4, 31)),
                min_data_in_bin=1, n_jobs=1, verbose=-1)


def _lightgbm(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    from lightgbm import LGBMRegressor

    return LGBMRegressor(**lightgbm_params(n, config, seed))


def _ridge(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=config.ridge_alpha)  # the reference code's small-n model


def _quadratic(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    """Scheffe's quadratic mixture model (the usual response surface for mixture experiments): the shares
    and their pairwise products, so an optimum can sit inside the simplex (a little of a second dataset
    helping), which a linear model always puts on an edge and trees cannot place beyond the last
    evaluated point. The features are standardised before the ridge penalty, and the penalty is chosen
    by leave-one-out (efficient generalised cross-validation) among `QUADRATIC_ALPHAS`: a fixed penalty
    of 0.5 against products of size 0.01-0.1 flattened the fit to a Spearman of 0.6-0.7 on an exactly
    quadratic objective."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    return make_pipeline(PolynomialFeatures(degree=2, include_bias=False), StandardScaler(),
                         RidgeCV(alphas=QUADRATIC_ALPHAS))


QUADRATIC_ALPHAS = tuple(np.geomspace(1e-4, 1e3, 22))
"""Ridge penalties the quadratic model chooses from, on standardised features."""


class GaussianProcess:
    """A Gaussian process on the shares: Matern 5/2 with one length scale per candidate, a learned noise
    level (WhiteKernel) and a constant mean. Its mean goes back to the average score away from the
    data, so it does not extrapolate to an untried corner of the simplex as a polynomial can; its
    posterior standard deviation is the uncertainty `ei` needs, without a bootstrap ensemble."""

    def __init__(self, seed: int):
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> "GaussianProcess":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        k = X.shape[1]
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=np.full(k, 0.5), length_scale_bounds=(0.05, 20.0), nu=2.5)
                  + WhiteKernel(0.1, (1e-6, 1.0)))
        self.model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter at the bounds of the length scales
            self.model.fit(X, y)
        self.y_scale = float(np.std(y)) or 1.0  # normalize_y fits the kernel to y over its standard deviation
        return self

    def predict(self, X: np.ndarray, return_std: bool = False):
        return self.model.predict(X, return_std=return_std)

    @property
    def noise_std(self) -> float:
        """The learned noise level, in the units of y."""
        return float(np.sqrt(self.model.kernel_.k2.noise_level) * self.y_scale)


def _gp(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    return GaussianProcess(seed)


class MixingLaw:
    """A data-mixing law per target: score = c + b exp(x . w) - sum_i q_i max(0, x_i - m p_i)^2.

    The exponential of a linear function of the shares is the law of Ye et al. (2024): diminishing
    returns that extrapolate toward an untried corner the way a domain's loss does (a GP reverts to
    the mean there, trees stay flat). The second term is repetition (Muennighoff et al., 2023): a
    candidate's share beyond m times its token share p_i (m, q_i >= 0 learned; without a prior, p = 1/k)
    costs quadratically, which is what stops an optimum short of a small dataset's cap. 3 + 2k parameters,
    fitted by least squares from several starts of m, with a small ridge on w (exp(x.w + a) = e^a exp(x.w):
    without it c, b and w trade off freely).

    `one_cost` (the `law_one_cost` kind): one q for every candidate, k + 4 parameters, as Muennighoff et al. fit
    one decay constant for all data. Few points pass a given candidate's onset, so a q_i per candidate is fitted
    from almost nothing; one q is fitted from all of them. Better on the synthetic benchmarks at 28 points
    (benchmarks/RESULTS-search.md), also where the true costs differ per candidate; worse where the optimum sits
    at different multiples of the candidates' token shares (tests/search/test_search.py's bowl), which one onset
    and one cost cannot place."""

    penalty = 1e-3
    repeat_starts = (0.0, 1.0, 2.0, 3.0)

    def __init__(self, prior: np.ndarray | None = None, one_cost: bool = False):
        self.prior = prior
        self.one_cost = one_cost
        self.start: np.ndarray | None = None

    def warm_from(self, fitted: "MixingLaw") -> None:
        """Start from another fit's parameters only (one least-squares run, not 8): a cross-validation fold
        refits from the full data's solution, which it differs from by a few points."""
        self.start = fitted.theta

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MixingLaw":
        from scipy.optimize import least_squares

        k = X.shape[1]
        costs = 1 if self.one_cost else k
        self.p = np.full(k, 1.0 / k) if self.prior is None else np.asarray(self.prior, dtype=np.float64)
        self.centre, self.scale = float(np.mean(y)), float(np.std(y)) or 1.0
        z = (y - self.centre) / self.scale
        slope = np.linalg.lstsq(np.c_[np.ones(len(X)), X - X.mean(axis=0)], z, rcond=None)[0][1:]

        def residuals(theta):
            return np.r_[self._value(theta, X) - z, np.sqrt(self.penalty) * theta[2:2 + k]]  # w only: it and c, b trade off

        ridge = np.c_[np.zeros((k, 2)), np.sqrt(self.penalty) * np.eye(k), np.zeros((k, costs + 1))]

        def jacobian(theta):  # analytic: a finite-difference one costs 15 evaluations a step
            b, w, q, m = self._split(theta, k)
            rising = np.exp(np.clip(X @ w, -50, 50))
            excess = np.maximum(0.0, X - m * self.p)
            by_cost = -excess ** 2 if costs == k else -(excess ** 2).sum(axis=1, keepdims=True)
            rows = np.c_[np.ones(len(X)), rising, b * rising[:, None] * X, by_cost, 2 * excess @ (q * self.p)]
            return np.r_[rows, ridge]

        lower = np.r_[-np.inf, -np.inf, np.full(k, -np.inf), np.zeros(costs), 0.0]
        starts = [self.start] if self.start is not None else [
            np.r_[-sign * (1 + X.mean(axis=0) @ (sign * slope)), sign, sign * slope, np.full(costs, 1e-3), m]
            for sign in (1.0, -1.0)  # exp(x.w) rising (b > 0) or the score saturating (b < 0); w ~ the linear fit's slope
            for m in self.repeat_starts]
        best = None
        for start in starts:
            found = least_squares(residuals, start, jac=jacobian, bounds=(lower, np.inf), method="trf", ftol=1e-6, xtol=1e-6)
            if best is None or found.cost < best.cost:
                best = found
        self.theta = best.x
        return self

    @staticmethod
    def _split(theta: np.ndarray, k: int) -> tuple[float, np.ndarray, np.ndarray, float]:
        """(b, w, q per candidate, m) of theta = [c, b, w (k), q (k or 1), m]."""
        return theta[1], theta[2:2 + k], np.broadcast_to(theta[2 + k:-1], (k,)), theta[-1]

    def _value(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        b, w, q, m = self._split(theta, X.shape[1])
        return theta[0] + b * np.exp(np.clip(X @ w, -50, 50)) - np.maximum(0.0, X - m * self.p) ** 2 @ q

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.centre + self.scale * self._value(self.theta, X)


def _law(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    return MixingLaw(prior)


def _law_one_cost(n: int, config: SearchConfig, seed: int, prior: np.ndarray | None):
    return MixingLaw(prior, one_cost=True)


MODELS = {"lightgbm": _lightgbm, "ridge": _ridge, "quadratic": _quadratic, "gp": _gp, "law": _law,
          "law_one_cost": _law_one_cost}
"""Regressor kinds: name -> factory(n points, config, seed, token prior or None) of an sklearn-style estimator."""


def _fit(kind: str, X: np.ndarray, y: np.ndarray, config: SearchConfig, seed: int, prior: np.ndarray | None = None,
         warm=None):
    """A fitted regressor of `kind`; `warm`: a fit of the same kind on more points, where the kind can start from it."""
    model = MODELS[kind](len(X), config, seed, prior)
    if warm is not None and hasattr(model, "warm_from"):
        model.warm_from(warm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's feature-name chatter
        model.fit(X, y)
    return model


TABLE_ROWS = 4096
"""From this many rows LightGBM models predict through TreeTables: compiling one costs about what LightGBM spends on 4k rows."""


def _predict(model, X: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's feature-name chatter
        return np.asarray(model.predict(X), dtype=np.float64)


def folds(n: int, config: SearchConfig, seed: int) -> list[np.ndarray]:
    """Test indices of k shuffled folds; leave-one-out when n < 2 k (each fold would be tiny)."""
    k = n if n < 2 * config.cv_folds else config.cv_folds
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho; 0.0 when either side is constant (no ranking information), so it never wins a choice."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def cross_validated_spearman(kind: str, X: np.ndarray, y: np.ndarray, config: SearchConfig, seed: int,
                             prior: np.ndarray | None = None, warm=None) -> float:
    """Spearman between out-of-fold predictions and measured y (every point predicted by a model that never saw it;
    `warm`: the kind's fit on all points, where a fold's fit can start from it)."""
    predicted = np.empty(len(y))
    for test in folds(len(y), config, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        predicted[test] = _predict(_fit(kind, X[train], y[train], config, seed, prior, warm), X[test])
    return spearman(predicted, y)


@dataclass
class Predictor:
    """Fitted regressors, one per target, with the kind chosen for each and the cross-validation table."""

    targets: list[str]
    kinds: list[str]
    models: list = field(repr=False)
    cv_spearman: dict[str, dict[str, float]] = field(default_factory=dict)
    prior: np.ndarray | None = field(default=None, repr=False)
    """The candidates' token shares the fit was given (the `law` kind's repetition term needs them)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[rows, targets]; from TABLE_ROWS rows, the LightGBM targets go through one TreeTables."""
        out = np.empty((len(X), len(self.models)))
        trees = [t for t, m in enumerate(self.models) if hasattr(m, "booster_")] if len(X) >= TABLE_ROWS else []
        if trees:
            out[:, trees] = TreeTables.compile([self.models[t].booster_ for t in trees]).predict(X)
        for t, model in enumerate(self.models):
            if t not in trees:
                out[:, t] = _predict(model, X)
        return out

    @property
    def has_std(self) -> bool:
        """Whether every target's model gives a posterior standard deviation (the Gaussian process)."""
        return all(isinstance(m, GaussianProcess) for m in self.models)

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([rows, targets] mean, [rows, targets] standard deviation); needs `has_std`."""
        pairs = [model.predict(X, return_std=True) for model in self.models]
        return np.stack([m for m, _ in pairs], axis=1), np.stack([s for _, s in pairs], axis=1)

    def noise_std(self) -> np.ndarray | None:
        """Per target, the evaluation noise the Gaussian process learned (None for other kinds)."""
        return np.array([m.noise_std for m in self.models]) if self.has_std else None


def fit_predictor(X: np.ndarray, Y: np.ndarray, targets: list[str], config: SearchConfig, cross_validate: bool = True,
                  prior: np.ndarray | None = None) -> Predictor:
    """One regressor per target column of Y; with `auto`, the kind with the best cross-validated Spearman.
    `prior`: the candidates' token shares, where repetition starts (the `law` kind; None: equal shares)."""
    kinds, models, table = [], [], {}
    candidates = list(config.auto_kinds) if config.predictor == "auto" else [config.predictor]
    for t, name in enumerate(targets):
        y = Y[:, t]
        fitted = {kind: _fit(kind, X, y, config, config.seed + t, prior) for kind in candidates}
        if cross_validate or len(candidates) > 1:
            table[name] = {kind: cross_validated_spearman(kind, X, y, config, config.seed + t, prior, warm=fitted[kind])
                           for kind in candidates}
            kind = max(candidates, key=lambda k: table[name][k])
        else:
            kind = candidates[0]
        kinds.append(kind)
        models.append(fitted[kind])
    return Predictor(list(targets), kinds, models, table, prior)


def fit_ensemble(X: np.ndarray, Y: np.ndarray, predictor: Predictor, config: SearchConfig) -> list[Predictor]:
    """`ensemble_size` refits of the predictor's kinds on bootstrap resamples of the points."""
    rng = np.random.default_rng(config.seed + 1000)
    members = []
    for b in range(config.ensemble_size):
        rows = rng.integers(0, len(X), size=len(X))
        models = [_fit(kind, X[rows], Y[rows, t], config, config.seed + 100 * b + t, predictor.prior)
                  for t, kind in enumerate(predictor.kinds)]
        members.append(Predictor(predictor.targets, predictor.kinds, models, prior=predictor.prior))
    return members
