"""The surrogate and the objective: trees that split on few points, honest cross-validation, ranks and weights."""
from __future__ import annotations

import numpy as np
import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.search.acquisition import ACQUISITIONS, Candidates
from megatron_demix.search.config import SearchConfig
from megatron_demix.search.objective import composite, target_values, targets_of
from megatron_demix.search.predictor import (TABLE_ROWS, Predictor, cross_validated_spearman, fit_ensemble, fit_predictor,
                                              lightgbm_params)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(3), n)
    y = 1 - ((X - [0.2, 0.5, 0.3]) ** 2).sum(axis=1) + rng.normal(0, 0.005, n)
    return X, y


def test_lightgbm_splits_on_sixteen_points_where_its_defaults_would_not():
    X, y = _data(16)
    params = lightgbm_params(16, SearchConfig(), seed=0)
    assert params["min_child_samples"] == 2 and params["n_estimators"] == 300 and params["learning_rate"] == 0.02
    predictor = fit_predictor(X, y[:, None], ["score"], SearchConfig(predictor="lightgbm"), cross_validate=False)
    assert np.ptp(predictor.predict(X)[:, 0]) > 0.05  # not one constant leaf (LightGBM's defaults need 40 rows)
    from lightgbm import LGBMRegressor

    constant = LGBMRegressor(n_estimators=300, learning_rate=0.02, verbose=-1).fit(X, y).predict(X)
    assert np.ptp(constant) == 0  # the reference code's behaviour on 16 points


def test_cross_validated_spearman_is_out_of_fold_and_auto_picks_the_better_kind():
    X, y = _data(48)
    config = SearchConfig(predictor="auto")
    assert cross_validated_spearman("lightgbm", X, y, config, seed=0) > 0.6
    noise = np.random.default_rng(1).normal(size=48)
    assert abs(cross_validated_spearman("lightgbm", X, noise, config, seed=0)) < 0.5  # memorising noise does not score
    predictor = fit_predictor(X, np.stack([y, X[:, 0]], axis=1), ["bowl", "linear"], config)
    assert set(predictor.cv_spearman["linear"]) == {"gp", "quadratic", "lightgbm"}
    assert predictor.kinds[1] == max(predictor.cv_spearman["linear"], key=predictor.cv_spearman["linear"].get)
    members = fit_ensemble(X, y[:, None], fit_predictor(X, y[:, None], ["s"], config), SearchConfig(ensemble_size=4))
    spread = np.std([m.predict(X[:5])[:, 0] for m in members], axis=0)
    assert len(members) == 4 and spread.max() > 0


def test_quadratic_places_an_optimum_inside_the_simplex_where_ridge_goes_to_an_edge():
    share = np.linspace(0, 1, 16)
    X = np.stack([share, 1 - share], axis=1)
    y = -((share - 0.7) ** 2)  # a little of the second dataset helps
    grid = np.stack([np.linspace(0, 1, 101), 1 - np.linspace(0, 1, 101)], axis=1)
    best = {}
    for kind in ("ridge", "quadratic"):
        fitted = fit_predictor(X, y[:, None], ["score"], SearchConfig(predictor=kind, ridge_alpha=1e-4), cross_validate=False)
        best[kind] = grid[np.argmax(fitted.predict(grid)[:, 0]), 0]
    assert best["ridge"] in (0.0, 1.0)
    assert best["quadratic"] == pytest.approx(0.7, abs=0.02)


def test_best_measured_says_whether_the_final_mixture_is_behind_by_more_than_the_noise():
    from megatron_demix.search.driver import best_measured

    def result(ident, round_name, share, score, stderr):
        return {"id": ident, "round": round_name, "mixture": {"a": share, "b": 1 - share},
                "domains": {"d": score}, "domain_stderrs": {"d": stderr}}

    everything = [result("r0-0", "round-0", 0.2, 0.50, 0.03), result("final", "final", 0.9, 0.46, 0.04)]
    Y = np.array([[0.50], [0.46]])
    entry = best_measured(everything, Y[:, 0], Y, 1, ["d"], "macro_rank")
    assert entry["id"] == "r0-0" and entry["mixture"] == {"a": 0.2, "b": 0.8}
    assert entry["difference"]["d"]["final_minus_best"] == pytest.approx(-0.04)
    assert entry["difference"]["d"]["z"] == pytest.approx(-0.04 / 0.05)  # se = hypot(0.03, 0.04)
    del everything[0]["domain_stderrs"]  # e.g. a user's eval.command: no standard errors, no claim
    assert best_measured(everything, Y[:, 0], Y, 1, ["d"], "macro_rank")["difference"] is None


def test_macro_rank_uses_percentile_ranks_and_domain_weights():
    reference = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]])
    values = np.array([[3.0, 10.0], [0.0, 40.0]])
    equal = composite(values, reference, ["math", "code"], "macro_rank", {})
    assert equal == pytest.approx([(1.0 + 0.25) / 2, (0.25 + 1.0) / 2])
    weighted = composite(values, reference, ["math", "code"], "macro_rank", {"math": 3, "code": 1})
    assert weighted[0] > weighted[1]
    with pytest.raises(ConfigError, match="search.domain_weights: unknown domain"):
        composite(values, reference, ["math", "code"], "macro_rank", {"prose": 1})


def test_one_metric_objective_is_oriented_by_lower_is_better():
    results = [{"domains": {"d": 1.0}, "metrics": {"ppl": 12.0, "acc": 0.5}}]
    assert targets_of(results, "ppl") == ["ppl"]
    assert target_values(results[0], ["ppl"], "ppl", lower_is_better=["ppl"]) == [-12.0]
    with pytest.raises(ConfigError, match="search.objective: 'bleu' is not a metric"):
        targets_of(results, "bleu")


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_acquisitions_pick_distinct_unevaluated_mixtures(name):
    rng = np.random.default_rng(0)
    pool = rng.dirichlet(np.ones(3), 5000)
    score = -np.abs(pool - [0.2, 0.5, 0.3]).sum(axis=1)
    evaluated = np.zeros(len(pool), bool)
    evaluated[np.argsort(-score)[:3]] = True
    ensemble = score[None, :] + rng.normal(0, 0.01, (4, len(pool)))
    config = SearchConfig(acquisition_top=64, min_distance=0.05)
    picks = ACQUISITIONS[name].pick(Candidates(pool, score, ensemble, evaluated, pool[evaluated]), 8, rng, config)
    assert len(picks) == len(set(picks)) == 8 and not evaluated[picks].any()
    assert np.median(score[picks]) > np.quantile(score, 0.9)  # exploits the prediction
    if name != "top_random":
        chosen = pool[picks]
        gaps = np.abs(chosen[:, None, :] - chosen[None, :, :]).sum(axis=2) + np.eye(8) * 9
        assert gaps.min() >= 0.05  # the diversity constraint


def _edge_rows(boosters, k: int, rng) -> np.ndarray:
    """Rows whose values sit exactly on the trees' thresholds (as dump_model reports them, not as TreeTables
    parses them), one ulp either side, and at LightGBM's input special cases: 0, +-1e-36 (read as 0), NaN."""
    thresholds = []
    for booster in boosters:
        stack = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                thresholds.append(node["threshold"])
                stack += [node["left_child"], node["right_child"]]
    values = np.array(thresholds)
    rows = rng.choice(np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf)]), size=(2000, k))
    special = rng.random(rows.shape) < 0.2
    rows[special] = rng.choice([0.0, 1e-36, -1e-36, np.nan, -1.0, 2.0], size=special.sum())
    return rows


def test_tree_tables_predict_exactly_what_lightgbm_predicts():
    from lightgbm import LGBMRegressor

    from megatron_demix.search.sampler import MixtureSpace
    from megatron_demix.search.tree_tables import TreeTables

    prior = dict(zip("abcdefg", [0.5, 0.111, 0.027, 0.039, 0.02, 0.055, 0.248]))
    config = SearchConfig(predictor="lightgbm")
    rng = np.random.default_rng(0)
    pool = MixtureSpace.build(prior, config).sample(8000, rng)  # shares on the 2e-4 grid, many exact zeros
    X = pool[rng.choice(len(pool), 224, replace=False)]
    Y = np.sin(X @ rng.normal(size=(7, 3)) * 3)
    boosters = [fit_predictor(X, Y, ["a", "b", "c"], config, cross_validate=False).models[t].booster_ for t in range(3)]
    boosters.append(fit_predictor(X[:16], Y[:16, :1], ["few"], config, cross_validate=False).models[0].booster_)
    boosters.append(LGBMRegressor(n_estimators=5, n_jobs=1, verbose=-1).fit(X[:16], Y[:16, 0]).booster_)  # one-leaf trees
    rows = np.concatenate([pool, _edge_rows(boosters, 7, rng)])
    expected = np.stack([b.predict(rows) for b in boosters], axis=1)
    tables = TreeTables.compile(boosters)
    got = tables.predict(rows)
    assert np.abs(got - expected).max() < 1e-9 and not tables.untabled
    small = TreeTables.compile(boosters, cell_limit=4, max_cells=4)  # boosters with a larger tree: LightGBM
    assert 4 in small.tabled and 0 in small.untabled
    assert np.abs(small.predict(rows) - expected).max() < 1e-9
    for t in range(3):  # the pool ranks the same, ties included (rows reaching the same leaves: equal bits)
        order = lambda v: np.argsort(-v[: len(pool)], kind="stable")  # noqa: E731
        assert np.array_equal(order(got[:, t]), order(expected[:, t]))
        assert len(np.unique(got[: len(pool), t])) == len(np.unique(expected[: len(pool), t])) < len(pool)
    assert len(tables.values) > 5 and np.ptp(got[:, 0]) > 0.1  # tables really were built from real splits

    trees = fit_predictor(X, Y[:, :1], ["a"], config, cross_validate=False)
    ridge = fit_predictor(X, Y[:, 1:2], ["b"], SearchConfig(predictor="ridge"), cross_validate=False)
    mixed = Predictor(["a", "b"], ["lightgbm", "ridge"], trees.models + ridge.models)  # what `auto` may choose
    for rows in (pool, pool[:TABLE_ROWS - 1]):  # through TreeTables, and through LightGBM's own predict
        expected = np.stack([trees.models[0].booster_.predict(rows), ridge.models[0].predict(rows)], axis=1)
        assert np.abs(mixed.predict(rows) - expected).max() < 1e-9

    zero_missing = LGBMRegressor(n_estimators=5, min_child_samples=2, zero_as_missing=True, n_jobs=1, verbose=-1).fit(X, Y[:, 0])
    with pytest.raises(ValueError, match="booster 0 has missing-value splits"):
        TreeTables.compile([zero_missing.booster_])


def test_quadratic_fits_an_exactly_quadratic_objective_with_its_penalty_scaled_to_its_features():
    """A fixed ridge penalty of 0.5 against products of size 0.01-0.1 gave a CV Spearman of 0.6-0.7 here."""
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.full(3, 4.0), 28)
    y = 1 - 4 * ((X - [0.3, 0.3, 0.4]) ** 2).sum(axis=1) + rng.normal(0, 0.002, 28)
    assert cross_validated_spearman("quadratic", X, y, SearchConfig(), seed=0) > 0.9


def test_gaussian_process_learns_the_noise_and_gives_a_posterior_spread():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.full(3, 3.0), 40)
    truth = 1 - 4 * ((X - [0.2, 0.5, 0.3]) ** 2).sum(axis=1)
    y = truth + rng.normal(0, 0.05, 40)
    predictor = fit_predictor(X, y[:, None], ["d"], SearchConfig(predictor="gp"), cross_validate=False)
    assert predictor.has_std and 0.02 < predictor.noise_std()[0] < 0.1  # the true noise is 0.05
    far = np.array([[0.98, 0.01, 0.01]])
    near = X[:1]
    _, std = predictor.predict_with_std(np.concatenate([near, far]))
    assert std[1, 0] > std[0, 0]  # less sure away from the data


def test_standardized_objective_respects_magnitudes_where_ranks_do_not():
    """Mixture a gives up a lot of math for a little code; ranks call it a tie, the standardized score does not."""
    measured = np.array([[0.50, 0.30], [0.52, 0.20], [0.48, 0.25], [0.51, 0.28]])  # [code, math]
    values = np.array([[0.52, 0.20], [0.50, 0.30]])  # a: best code, worst math; b: second code, best math
    ranks = composite(values, measured, ["code", "math"], "macro_rank", {})
    standardized = composite(values, measured, ["code", "math"], "standardized", {}, measured=measured)
    assert ranks[0] == pytest.approx(ranks[1], abs=0.13)
    assert standardized[1] > standardized[0] + 0.5  # b: 0.48 vs a: -0.17 (domain spreads as units)


def test_the_mixing_law_finds_where_repetition_stops_a_saturating_gain():
    """score = -(1 + exp(-4 x0 - 2 x1)) - 3 max(0, x0 - 2 p0)^2: more of x0 helps with diminishing returns until
    its share passes twice its token share p0. The law, given the prior, places the best x0 where the truth has
    it; the linear ridge, the reference's small-n model, runs to the end of the line."""
    rng = np.random.default_rng(0)
    prior = np.array([0.1, 0.3, 0.6])
    truth = lambda X: -(1 + np.exp(-4 * X[:, 0] - 2 * X[:, 1])) - 3 * np.maximum(0, X[:, 0] - 2 * prior[0]) ** 2  # noqa: E731
    X = rng.dirichlet(prior * 10, 28)
    y = truth(X) + rng.normal(0, 0.002, len(X))
    share = np.linspace(0.05, 0.6, 56)
    line = np.stack([share, np.full(56, 0.3), 0.65 - share], axis=1)
    best = {kind: share[np.argmax(fit_predictor(X, y[:, None], ["s"], SearchConfig(predictor=kind), cross_validate=False,
                                                prior=prior).predict(line)[:, 0])] for kind in ("law", "ridge")}
    best_true = share[np.argmax(truth(line))]
    assert 0.25 < best_true < 0.35
    assert abs(best["law"] - best_true) < 0.03 and best["ridge"] > best_true + 0.2
