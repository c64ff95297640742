"""Paired bootstrap of the fidelity metrics: one set of resampled mixtures shared by every method and domain.

    boot = PairedBootstrap(n=24, samples=2000, seed=7)       # indices [samples, n], drawn once
    boot.metric("rho", proxy, reference)                      # [samples] values (NaN where undefined)
    boot.interval(values)                                     # 95% percentile interval, or None

Resampling the same mixtures for every (method, domain) is what makes differences between methods
(demix - trained, demix - interpolation) and macro averages valid: a hard mixture drawn twice hurts
every method in the same resample. The indices are `default_rng(seed).integers(0, n, (samples, n))`,
so a test can draw the same ones and recompute every resample with scipy.

The metrics are the ones of metrics.py, vectorised over resamples (2,000 x 5 methods x 3 domains x 5
metrics would take minutes through scipy one resample at a time); each equals its scipy counterpart
on every resample, ties included: Spearman = Pearson of average ranks, Kendall tau-b from pairwise
signs, top-25% keeps the k highest references (stable order, as metrics.top_quartile_rho).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from megatron_demix.validate.metrics import top_quartile_size


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r (the callers make a row with a constant side NaN: a rank correlation is undefined)."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=-1) / denominator
    return np.clip(r, -1, 1)


def _constant(values: np.ndarray) -> np.ndarray:
    return np.all(values == values[..., :1], axis=-1)


def spearman_rows(proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    r = _pearson_rows(stats.rankdata(proxy, axis=-1), stats.rankdata(reference, axis=-1))
    return np.where(_constant(proxy) | _constant(reference), np.nan, r)


def kendall_rows(proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """tau-b = sum sign(dx) sign(dy) / sqrt(sum sign(dx)^2 sum sign(dy)^2) over pairs i < j."""
    n = proxy.shape[-1]
    upper = np.triu_indices(n, k=1)
    dx = np.sign(proxy[..., :, None] - proxy[..., None, :])[..., upper[0], upper[1]]
    dy = np.sign(reference[..., :, None] - reference[..., None, :])[..., upper[0], upper[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (dx * dy).sum(axis=-1) / np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    return np.where(_constant(proxy) | _constant(reference), np.nan, tau)


def top_quartile_rows(proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    k = top_quartile_size(proxy.shape[-1])
    keep = np.argsort(reference, axis=-1, kind="stable")[..., -k:]
    return spearman_rows(np.take_along_axis(proxy, keep, -1), np.take_along_axis(reference, keep, -1))


def recovery_rows(proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    total = reference.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total != 0, proxy.sum(axis=-1) / total, np.nan)


def regret_rows(proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    picked = np.take_along_axis(reference, np.argmax(proxy, axis=-1)[..., None], -1)[..., 0]
    return reference.max(axis=-1) - picked


ROWS = {"rho": spearman_rows, "top25_rho": top_quartile_rows, "recovery": recovery_rows,
        "kendall_tau": kendall_rows, "regret": regret_rows}
"""metrics.METRICS, vectorised over the leading axes (same names)."""


class PairedBootstrap:
    """Resampled mixture indices, drawn once and applied to every method and domain."""

    def __init__(self, n: int, samples: int, seed: int, level: float = 0.95):
        self.n, self.samples, self.level = n, samples, level
        self.indices = np.random.default_rng(seed).integers(0, n, size=(samples, n))

    def metric(self, name: str, proxy: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """[samples] values of metric `name` on the resampled mixtures (NaN where a resample leaves it undefined)."""
        return ROWS[name](np.asarray(proxy, np.float64)[self.indices], np.asarray(reference, np.float64)[self.indices])

    def interval(self, values: np.ndarray) -> tuple[float, float] | None:
        """Percentile interval over the resamples where the metric is defined; None when under half of them are
        (with a handful of mixtures many resamples are constant)."""
        defined = values[np.isfinite(values)]
        if len(defined) < self.samples / 2:
            return None
        tail = (1 - self.level) / 2 * 100
        low, high = np.percentile(defined, [tail, 100 - tail])
        return float(low), float(high)
