"""Proxy fidelity: how well proxy scores rank mixtures the way trained reference models do.

    pairs = paired_scores(proxy, reference, domain="code", method="demix")   # {mixture id: score} each
    spearman_rho(*pairs.arrays)  top_quartile_rho(*pairs.arrays)  capability_recovery(*pairs.arrays)

The paper's three metrics follow the reference code (DeMix eval_merged/proxy_eval.py) exactly:
- rho: `scipy.stats.spearmanr(proxy, reference)` over the mixtures present in both sets;
- top-25% rho: the same on the k = min(max(2, floor(n / 4)), n) mixtures with the highest
  reference scores;
- capability recovery: sum(proxy) / sum(reference), a ratio of sums;
- macro: the arithmetic mean over domains.
Where the reference code turns a NaN rho into 0, a missing score into 0 or divides by a zero sum,
these raise `MetricUndefined` naming the method, domain and mixture. Added here: Kendall tau and
regret (how much reference score is lost by trusting the proxy's best mixture); their intervals
come from one paired bootstrap over mixtures (bootstrap.py; with 16 references top-25% rho moves
in steps of 0.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats


class MetricUndefined(ValueError):
    """A metric has no value on these scores (a constant input, too few mixtures, a NaN, a zero sum)."""


@dataclass(frozen=True)
class PairedScores:
    """One method's proxy scores and the reference scores of the same mixtures, for one domain."""

    ids: tuple[str, ...]
    proxy: np.ndarray
    reference: np.ndarray
    where: str
    """`method X, domain Y`: names the scores in every error."""


def paired_scores(proxy: dict[str, dict[str, float]], reference: dict[str, dict[str, float]], domain: str,
                  method: str = "proxy") -> PairedScores:
    """The mixtures present in both sets (`{mixture id: {domain: score}}`), in sorted id order.

    A mixture of both sets without a score for `domain`, or with a non-finite one, is an error (the
    reference code scored it 0)."""
    where = f"method {method}, domain {domain}"
    ids = tuple(sorted(set(proxy) & set(reference)))
    values = {}
    for side, scores in (("proxy", proxy), ("reference", reference)):
        column = []
        for ident in ids:
            value = scores[ident].get(domain)
            if value is None or not math.isfinite(value):
                state = "no score" if value is None else f"score {value}"
                raise MetricUndefined(f"{where}: mixture {ident} has {state} in the {side} results;"
                                      " re-run its evaluation (a missing score is not a 0)")
            column.append(float(value))
        values[side] = np.array(column, dtype=np.float64)
    return PairedScores(ids, values["proxy"], values["reference"], where)


def _check(pairs: PairedScores, least: int) -> None:
    if len(pairs.ids) < least:
        raise MetricUndefined(f"{pairs.where}: {len(pairs.ids)} mixture(s) in both the proxy and reference results;"
                              f" at least {least} needed")


def _rank_correlation(function, proxy: np.ndarray, reference: np.ndarray, where: str) -> float:
    for side, values in (("proxy", proxy), ("reference", reference)):
        if np.all(values == values[0]):
            raise MetricUndefined(f"{where}: the {side} scores are all equal ({values[0]:.6g}) over {len(values)}"
                                  " mixtures: a rank correlation is undefined (the reference code reported 0)")
    return float(function(proxy, reference)[0])


def spearman_rho(pairs: PairedScores) -> float:
    """scipy's Spearman rho (average ranks for ties) over every paired mixture."""
    _check(pairs, 2)
    return _rank_correlation(stats.spearmanr, pairs.proxy, pairs.reference, pairs.where)


def kendall_tau(pairs: PairedScores) -> float:
    """scipy's Kendall tau-b over every paired mixture."""
    _check(pairs, 2)
    return _rank_correlation(stats.kendalltau, pairs.proxy, pairs.reference, pairs.where)


def top_quartile_size(n: int) -> int:
    """k = min(max(2, floor(n / 4)), n): how many of n mixtures the top-25% rho keeps."""
    return min(max(2, n // 4), n)


def top_quartile_rho(pairs: PairedScores) -> float:
    """Spearman rho over the k mixtures with the highest reference scores (ties at the cut: stable order)."""
    _check(pairs, 2)
    keep = np.argsort(pairs.reference, kind="stable")[-top_quartile_size(len(pairs.ids)):]
    return _rank_correlation(stats.spearmanr, pairs.proxy[keep], pairs.reference[keep], f"{pairs.where} (top 25%)")


def capability_recovery(pairs: PairedScores) -> float:
    """sum(proxy) / sum(reference): a ratio of sums, meaningful for positive higher-is-better scores (accuracy)."""
    _check(pairs, 1)
    if np.any(pairs.reference < 0) or np.any(pairs.proxy < 0):
        raise MetricUndefined(f"{pairs.where}: capability recovery needs scores >= 0 (accuracies); these include"
                              f" {min(pairs.reference.min(), pairs.proxy.min()):.4g} (bits per byte enter negated):"
                              " score the domain with accuracy-like tasks (eval.tasks)")
    if pairs.reference.sum() == 0:
        raise MetricUndefined(f"{pairs.where}: the reference scores sum to 0: capability recovery is undefined")
    return float(pairs.proxy.sum() / pairs.reference.sum())


def regret(pairs: PairedScores) -> float:
    """Best reference score minus the reference score of the proxy's best mixture (0: the proxy picks the best)."""
    _check(pairs, 1)
    return float(pairs.reference.max() - pairs.reference[int(np.argmax(pairs.proxy))])


METRICS: dict[str, Callable[[PairedScores], float]] = {
    "rho": spearman_rho,
    "top25_rho": top_quartile_rho,
    "recovery": capability_recovery,
    "kendall_tau": kendall_tau,
    "regret": regret,
}
"""Every fidelity metric by the name its column has in fidelity.csv."""
