"""The search's decisions on arrays (search/policy.py): floors, token caps, the answer and its check."""
from __future__ import annotations

import numpy as np
import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.search.config import SearchConfig
from megatron_demix.search.policy import Answer, Evidence, Surrogate, check_answer, choose_answer, propose
from megatron_demix.search.sampler import MixtureSpace

PRIOR = np.array([0.5, 0.3, 0.2])


def _setting(config: SearchConfig, n: int = 24, seed: int = 0, noise: float = 0.01):
    """Two domains pulling apart: `a` best at mixture (0.1, 0.1, 0.8), `b` best at (0.1, 0.8, 0.1)."""
    space = MixtureSpace.build(dict(zip("xyz", PRIOR)), config)
    pool = space.sample(4000, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    X = pool[rng.choice(len(pool), n, replace=False)]

    def truth(rows):
        return np.stack([1 - 2 * ((rows - [0.1, 0.1, 0.8]) ** 2).sum(axis=1),
                         1 - 2 * ((rows - [0.1, 0.8, 0.1]) ** 2).sum(axis=1)], axis=1)

    Y = truth(X) + rng.normal(0, noise, (n, 2))
    return space, pool, Evidence(X, Y, ["a", "b"], np.full((n, 2), noise)), truth


@pytest.mark.parametrize("rule,predictor", [("argmax", "gp"), ("top_k_mean", "lightgbm")])
def test_the_answer_is_among_the_truly_best_and_respects_the_caps(rule, predictor):
    config = SearchConfig(predictor=predictor, final=rule, pool_size=4000, cap_multiple=1.6)  # caps 0.8, 0.48, 0.32
    space, pool, evidence, truth = _setting(config)
    surrogate = Surrogate.fit(evidence, pool, space.prior, config)
    answer = choose_answer(surrogate, pool, space, np.random.default_rng(0))
    assert answer.rule == rule and np.all(answer.mixture <= space.upper + 1e-12)
    score = truth(answer.mixture[None]).mean()
    assert score >= np.quantile(truth(pool).mean(axis=1), 0.95)  # among the best 5% of the pool, truly


def test_domain_floors_keep_every_proposal_and_the_answer_above_the_prior_minus_the_drop():
    config = SearchConfig(predictor="gp", pool_size=4000, domain_floors={"a": 0.0}, domain_weights={"a": 0.05, "b": 0.95})
    space, pool, evidence, truth = _setting(config)
    surrogate = Surrogate.fit(evidence, pool, space.prior, config)
    rows, predicted, _ = propose(surrogate, pool, space, 8, np.random.default_rng(0))
    assert np.all(predicted[:, 0] >= surrogate.prior_predicted[0] - 1e-12)
    answer = choose_answer(surrogate, pool, space, np.random.default_rng(0))
    assert surrogate.predictor.predict(answer.mixture[None])[0, 0] >= surrogate.prior_predicted[0] - 1e-12
    free = Surrogate.fit(evidence, pool, space.prior, SearchConfig(predictor="gp", domain_weights={"a": 0.05, "b": 0.95}))
    unconstrained = choose_answer(free, pool, space, np.random.default_rng(0))
    assert free.predictor.predict(unconstrained.mixture[None])[0, 0] < free.prior_predicted[0]  # the floor binds here
    with pytest.raises(ConfigError, match="search.domain_floors: unknown domain"):
        Surrogate.fit(evidence, pool, space.prior, SearchConfig(domain_floors={"prose": 0.1}))


def test_an_answer_measured_worse_than_the_best_evaluated_beyond_the_noise_is_not_handed_out():
    config = SearchConfig(predictor="gp", pool_size=4000)
    space, pool, evidence, truth = _setting(config, noise=0.01)
    best = int(np.argmax(evidence.Y.mean(axis=1)))
    bad = np.array([0.9, 0.05, 0.05])  # far from both optima
    X = np.concatenate([evidence.X, bad[None]])
    measured = np.concatenate([evidence.Y, truth(bad[None])])
    stderr = np.full(measured.shape, 0.01)
    refit = Surrogate.fit(Evidence(X, measured, ["a", "b"], stderr), pool, space.prior, config)
    kept, check = check_answer(refit, Answer(bad, "argmax", "predicted best"), len(X) - 1)
    assert not check["kept"] and check["z"] < -2 and kept.rule == "best_evaluated"
    assert any(np.allclose(kept.mixture, x) for x in evidence.X)  # an evaluated mixture
    assert truth(kept.mixture[None]).mean() > truth(bad[None]).mean()
    # Within the noise: kept.
    near = X[best]
    close = np.concatenate([evidence.X, near[None]])
    same = np.concatenate([evidence.Y, evidence.Y[best:best + 1] - 0.005])
    refit = Surrogate.fit(Evidence(close, same, ["a", "b"], np.full(same.shape, 0.01)), pool, space.prior, config)
    assert check_answer(refit, Answer(near, "argmax", "predicted best"), len(close) - 1)[1]["kept"]


def _experiment(tmp_path, search: dict):
    from megatron_demix.experiment import experiment_from_dict

    data = {"name": "caps", "work_dir": str(tmp_path / "work"),
            "datasets": [{"name": "general", "role": "general", "builtin": "prose"}]
                        + [{"name": n, "builtin": "prose"} for n in ("web", "math", "code")],
            "search": search}
    return experiment_from_dict(data, "caps")


def test_token_caps_bound_each_share_by_max_epochs_times_its_tokens(tmp_path):
    from megatron_demix.search.sampler import token_caps

    tokens = {"web": 5e9, "math": 2e9, "code": 1e9}
    experiment = _experiment(tmp_path, {"prior": tokens, "target_tokens": 20e9, "max_epochs": 4})
    caps = token_caps(experiment)  # (1 - beta) x share x 20e9 <= 4 x tokens
    assert caps == pytest.approx({"web": 2.0, "math": 0.8, "code": 0.4})
    space = MixtureSpace.build({n: v / 8e9 for n, v in tokens.items()}, experiment.search, caps)
    assert np.all(space.sample(2000, np.random.default_rng(0)).max(axis=0) <= [1.0, 0.8, 0.4])
    experiment = _experiment(tmp_path, {"prior": tokens, "target_tokens": 200e9, "max_epochs": 4})
    with pytest.raises(ConfigError, match="lower search.target_tokens or raise search.max_epochs"):
        MixtureSpace.build(tokens, experiment.search, token_caps(experiment))
    with pytest.raises(ConfigError, match="search.target_tokens"):
        _experiment(tmp_path, {"prior": tokens, "target_tokens": 200e9})


def test_a_top_k_piled_on_a_corner_gives_the_best_predicted_not_their_grid_mean():
    """Two candidates, a score rising toward the corner: the top 32 grid points there average to 0.9969
    (fixed by top_k x granularity); the answer is the region the predictor points at (LightGBM is flat
    beyond its last split: the centre of that flat top)."""
    config = SearchConfig(predictor="lightgbm", final="top_k_mean", top_k=32, pool_size=5001, climb_starts=0)
    space = MixtureSpace.build({"code": 0.5, "math": 0.5}, SearchConfig(cap_multiple=2.0, top_k=32))
    pool = np.stack([np.arange(5001) * 2e-4, 1 - np.arange(5001) * 2e-4], axis=1)
    X = pool[np.linspace(0, 5000, 20).astype(int)]
    evidence = Evidence(X, np.stack([X[:, 0], X[:, 0]], axis=1), ["a", "b"])
    answer = choose_answer(Surrogate.fit(evidence, pool, space.prior, config), pool, space, np.random.default_rng(0))
    assert answer.rule == "argmax" and "sit on one spot" in answer.reason
    assert 0.9 < answer.mixture[0] < 0.99 and abs(answer.mixture.sum() - 1) < 1e-9


def test_the_climb_reaches_an_optimum_beyond_the_pool_and_stays_within_the_bounds_on_the_grid():
    """A surrogate that fits exactly (quadratic on noise-free quadratic domains) and a sparse pool: the climb's
    best candidate reaches the true optimum within the caps, which no pool mixture does, on the grid."""
    config = SearchConfig(predictor="quadratic", final="argmax", pool_size=4000, climb_starts=8)  # caps 1, 1, 0.8
    space, pool, evidence, truth = _setting(config, n=40, noise=0.0)
    evidence.stderr, pool = None, pool[:100]
    surrogate = Surrogate.fit(evidence, pool, space.prior, config)
    rows, _, scores = surrogate.candidates(pool, space, np.random.default_rng(0))
    climbed = rows[len(pool):]
    assert len(climbed) and np.all(climbed <= space.upper + 1e-12) and np.all(climbed >= -1e-12)
    units = np.round(climbed / config.granularity)
    assert np.allclose(units * config.granularity, climbed) and np.allclose(units.sum(axis=1), 1 / config.granularity)
    grid = np.array([[a, b, 1 - a - b] for a in np.arange(0, 1.0001, 0.002) for b in np.arange(0, 1.0001 - a, 0.002)
                     if 1 - a - b <= 0.8])
    predicted = lambda rows: surrogate.score(surrogate.predictor.predict(rows))  # noqa: E731
    assert predicted(climbed).max() >= predicted(grid).max() - 1e-6  # the climb finds the surrogate's own maximum
    optimum = truth(np.array([[0.1, 0.45, 0.45]])).mean()  # midway between the two domains' optima
    best_pool, best_climbed = truth(pool).mean(axis=1).max(), truth(climbed).mean(axis=1).max()
    assert optimum - best_climbed < (optimum - best_pool) / 3
    answer = choose_answer(surrogate, pool, space, np.random.default_rng(0)).mixture
    assert any(np.allclose(answer, row) for row in climbed)
