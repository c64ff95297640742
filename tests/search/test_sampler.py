"""The candidate pool: on the simplex, on the grid, within caps and bounds, centred on the prior, fast."""
from __future__ import annotations

import time

import numpy as np
import pytest

from megatron_demix.config.base import ConfigError, build
from megatron_demix.search.config import SearchConfig
from megatron_demix.search.sampler import MixtureSpace

PAPER_PRIOR = {"general_target": 639, "math_very_high": 284, "math_high": 69, "math_medium": 100,
               "code_very_high": 51, "code_high": 141, "code_medium": 633}


def _sample(prior, n=20_000, seed=0, **search):
    space = MixtureSpace.build(prior, SearchConfig(**search))
    return space, space.sample(n, np.random.default_rng(seed))


def test_every_mixture_sums_to_one_on_the_grid_within_caps():
    space, pool = _sample(PAPER_PRIOR)
    assert pool.shape == (20_000, 7)
    assert np.abs(pool.sum(axis=1) - 1).max() < 1e-9
    units = pool / 2e-4
    assert np.abs(units - np.rint(units)).max() < 1e-6
    assert (pool <= np.minimum(4 * space.prior, 1) + 1e-12).all() and (pool >= 0).all()
    assert (pool[pool > 0] >= 2e-4 - 1e-12).all()  # zeroing below 2e-4
    assert len(np.unique(pool, axis=0)) == len(pool)
    # Caps bind: the cap of the smallest candidate (4 x 0.027) is reached by some draws.
    assert pool[:, 4].max() == pytest.approx(np.floor(4 * space.prior[4] / 2e-4) * 2e-4)


def test_bounds_hold_and_pool_statistics_follow_the_prior():
    prior = {"a": 0.5, "b": 0.3, "c": 0.2}
    space, pool = _sample(prior, temperature=1.0, cap_multiple=10.0, strengths=[5.0, 50.0], zero_below=0.0)
    assert np.abs(pool.mean(axis=0) - space.prior).max() < 0.01
    _, bounded = _sample(prior, bounds={"a": [0.1, 0.3], "c": [0.25, 0.6]}, granularity=1e-3)
    assert (bounded[:, 0] >= 0.1 - 1e-12).all() and (bounded[:, 0] <= 0.3 + 1e-12).all()
    assert (bounded[:, 2] >= 0.25 - 1e-12).all() and (bounded[:, 2] <= 0.6 + 1e-12).all()
    assert np.abs(bounded.sum(axis=1) - 1).max() < 1e-9
    assert np.abs(bounded * 1000 - np.rint(bounded * 1000)).max() < 1e-6


def test_same_seed_same_pool_and_a_million_candidates_in_seconds():
    _, first = _sample(PAPER_PRIOR, n=2000, seed=3)
    _, again = _sample(PAPER_PRIOR, n=2000, seed=3)
    assert np.array_equal(first, again)
    space = MixtureSpace.build(PAPER_PRIOR, SearchConfig())
    start = time.perf_counter()
    million = space.sample(1_000_000, np.random.default_rng(1))
    seconds = time.perf_counter() - start
    assert million.shape == (1_000_000, 7) and np.abs(million.sum(axis=1) - 1).max() < 1e-9
    assert seconds < 60, f"1M candidates took {seconds:.1f}s"  # about 3 s on an idle 2-core machine



def test_draws_repeat_over_rounds_on_a_small_grid_yet_the_pool_has_no_duplicates():
    _, pool = _sample({"a": 0.5, "b": 0.3, "c": 0.2}, n=10_000, granularity=0.01)  # far fewer grid points than 10k
    assert 1000 < len(pool) < 10_000 and len(np.unique(pool, axis=0)) == len(pool)

@pytest.mark.parametrize("search, message", [
    ({"bounds": {"a": [0.6, 0.9], "b": [0.5, 0.7]}}, "minimum shares sum to 1.1 > 1"),
    ({"bounds": {"a": [0.2, 0.1]}}, "must be [min, max]"),
    ({"prior": {"a": 1, "b": 2}, "bounds": {"z": [0, 0.5]}}, "unknown candidate(s) z"),
    ({"prior": {"a": -1, "b": 2}}, "must be finite, >= 0"),
    ({"granularity": 3e-4}, "1/granularity an integer"),
    ({"strengths": [5.0, 0.5]}, "0 < low <= high"),
])
def test_infeasible_settings_are_refused_with_the_key(search, message):
    with pytest.raises(ConfigError, match="search") as error:
        build(SearchConfig, search, where="exp.yaml: search")
    assert message in str(error.value)


def test_caps_and_bounds_that_cannot_reach_one_are_refused():
    with pytest.raises(ConfigError, match="sum to 0.6 < 1: raise search.cap_multiple"):
        MixtureSpace.build({"a": 0.5, "b": 0.3, "c": 0.2}, SearchConfig(bounds={"a": [0, 0.2], "b": [0, 0.2], "c": [0, 0.2]}))
    with pytest.raises(ConfigError, match="minimum share of c exceeds its cap"):
        MixtureSpace.build({"a": 0.5, "b": 0.45, "c": 0.05}, SearchConfig(bounds={"c": [0.3, 1.0]}))
