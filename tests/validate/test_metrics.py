"""The fidelity metrics against computations written out by hand on small hand-made scores."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from megatron_demix.validate.bootstrap import ROWS, PairedBootstrap
from megatron_demix.validate.metrics import (METRICS, MetricUndefined, PairedScores, capability_recovery,
                                             kendall_tau, paired_scores, regret, spearman_rho, top_quartile_rho,
                                             top_quartile_size)

# 9 mixtures scored by trained references and by a proxy; one proxy-only and one reference-only mixture.
REFERENCE = {f"m{i}": {"code": c, "math": m} for i, (c, m) in
             enumerate([(0.30, 0.50), (0.42, 0.41), (0.35, 0.44), (0.50, 0.30), (0.28, 0.55), (0.45, 0.38),
                        (0.33, 0.47), (0.40, 0.42), (0.47, 0.33)])}
PROXY = {f"m{i}": {"code": c, "math": m} for i, (c, m) in
         enumerate([(0.25, 0.40), (0.36, 0.36), (0.31, 0.36), (0.40, 0.26), (0.26, 0.42), (0.34, 0.33),
                    (0.30, 0.40), (0.35, 0.36), (0.41, 0.30)])}
REFERENCE["only-ref"] = {"code": 0.9, "math": 0.9}
PROXY["only-proxy"] = {"code": 0.0, "math": 0.0}


def average_ranks(values):
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def by_hand(domain):
    ids = sorted(set(PROXY) & set(REFERENCE))
    return [PROXY[i][domain] for i in ids], [REFERENCE[i][domain] for i in ids]


@pytest.mark.parametrize("domain", ["code", "math"])
def test_rank_metrics_equal_a_hand_computation_over_the_shared_mixtures(domain):
    pairs = paired_scores(PROXY, REFERENCE, domain, "demix")
    assert pairs.ids == tuple(f"m{i}" for i in range(9))
    proxy, reference = by_hand(domain)
    assert spearman_rho(pairs) == pytest.approx(pearson(average_ranks(proxy), average_ranks(reference)))
    # top 25% of 9: k = max(2, 2) = 2, the two highest reference scores
    assert top_quartile_size(9) == 2 and top_quartile_size(16) == 4 and top_quartile_size(1) == 1
    top = sorted(range(9), key=lambda i: reference[i])[-2:]
    expected_top = pearson(average_ranks([proxy[i] for i in top]), average_ranks([reference[i] for i in top]))
    assert top_quartile_rho(pairs) == pytest.approx(expected_top)
    concordant = sum(1 for i, j in itertools.combinations(range(9), 2)
                     if (proxy[i] - proxy[j]) * (reference[i] - reference[j]) > 0)
    discordant = sum(1 for i, j in itertools.combinations(range(9), 2)
                     if (proxy[i] - proxy[j]) * (reference[i] - reference[j]) < 0)
    ties_p = sum(1 for i, j in itertools.combinations(range(9), 2) if proxy[i] == proxy[j])
    n0 = 36
    expected_tau = (concordant - discordant) / math.sqrt((n0 - ties_p) * n0)  # tau-b; the reference has no ties
    assert kendall_tau(pairs) == pytest.approx(expected_tau)
    assert capability_recovery(pairs) == pytest.approx(sum(proxy) / sum(reference))
    best_by_proxy = max(range(9), key=lambda i: proxy[i])
    assert regret(pairs) == pytest.approx(max(reference) - reference[best_by_proxy])


def test_a_perfect_proxy_scores_one_and_zero_regret():
    pairs = paired_scores(REFERENCE, REFERENCE, "code", "reference")
    assert spearman_rho(pairs) == pytest.approx(1.0) and top_quartile_rho(pairs) == pytest.approx(1.0)
    assert capability_recovery(pairs) == pytest.approx(1.0) and regret(pairs) == 0.0


@pytest.mark.parametrize("bad", [float("nan"), None])
def test_a_missing_or_nan_score_fails_naming_the_mixture_and_domain(bad):
    proxy = {**PROXY, "m3": {"code": bad, "math": 0.3} if bad is not None else {"math": 0.3}}
    with pytest.raises(MetricUndefined, match=r"method demix, domain code: mixture m3 has (no score|score nan) in the proxy"):
        paired_scores(proxy, REFERENCE, "code", "demix")


def test_undefined_metrics_fail_instead_of_reporting_zero():
    constant = {k: {"code": 0.5} for k in PROXY}
    with pytest.raises(MetricUndefined, match="proxy scores are all equal"):
        spearman_rho(paired_scores(constant, REFERENCE, "code"))
    one = paired_scores({"m0": PROXY["m0"]}, REFERENCE, "code")
    with pytest.raises(MetricUndefined, match="1 mixture"):
        top_quartile_rho(one)
    negated_bpb = {k: {"code": -v["code"]} for k, v in REFERENCE.items()}
    with pytest.raises(MetricUndefined, match="capability recovery needs scores >= 0"):
        capability_recovery(paired_scores(negated_bpb, negated_bpb, "code"))


def test_paired_bootstrap_intervals_are_seeded_and_equal_a_hand_computation():
    pairs = paired_scores(PROXY, REFERENCE, "code", "demix")
    first = PairedBootstrap(9, 400, seed=3)
    values = first.metric("rho", pairs.proxy, pairs.reference)
    assert first.interval(values) == PairedBootstrap(9, 400, seed=3).interval(values)
    other = PairedBootstrap(9, 400, seed=4)
    assert first.interval(values) != other.interval(other.metric("rho", pairs.proxy, pairs.reference))
    low, high = first.interval(values)
    assert low <= spearman_rho(pairs) <= high and low < high
    # by hand: the same resamples, the metric recomputed independently, the same percentiles
    picks, by_hand_values = np.random.default_rng(3).integers(0, 9, size=(400, 9)), []
    proxy, reference = by_hand("code")
    for pick in picks:
        p, r = [proxy[i] for i in pick], [reference[i] for i in pick]
        if len(set(p)) > 1 and len(set(r)) > 1:
            by_hand_values.append(pearson(average_ranks(p), average_ranks(r)))
    assert (low, high) == pytest.approx(tuple(np.percentile(by_hand_values, [2.5, 97.5])))


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_metrics_equal_scipy_on_every_resample_ties_included(seed):
    """bootstrap.ROWS against metrics.METRICS (scipy) on small integer scores: ties, constant resamples (NaN there)."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n = int(rng.integers(2, 10))
        proxy, reference = rng.integers(0, 4, n).astype(float), rng.integers(0, 5, n) + 0.5
        pairs = PairedScores(tuple(map(str, range(n))), proxy, reference, "x")
        for name, metric in METRICS.items():
            try:
                want = metric(pairs)
            except MetricUndefined:
                want = math.nan
            got = ROWS[name](proxy[None], reference[None])[0]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-12), (name, proxy, reference)
