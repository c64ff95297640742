"""What the search maximises: targets read from each evaluation, and one composite score per mixture.

`search.objective` (a registry, OBJECTIVES, plus metric names):
- `macro_rank` (the paper's): the targets are the domain scores (`eval.tasks` groups metrics into
  domains, higher is better); each becomes a percentile rank within a reference set (the pool's
  predictions, or the measured mixtures), and the composite is their mean with `search.domain_weights`.
  Ranks ignore magnitudes: a large loss on one domain can buy a tiny gain on another.
- `standardized`: each domain score minus its mean over the evaluated mixtures, divided by its spread
  (standard deviation) there, but at least its evaluation noise (the median standard error), weighted
  by `search.domain_weights`: a domain counts by how much the mixtures move it beyond the noise, in its
  own units, so magnitudes matter and no unit choice dominates.
- any other value names one metric of the evaluations' output: the target and the composite are
  that metric, negated when `eval.lower_is_better` lists it.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from megatron_demix.config.base import ConfigError


def targets_of(results: list[dict], objective: str) -> list[str]:
    """Target names: the domains every result reports (macro_rank), or the objective's metric."""
    if not results:
        raise ValueError("no successful evaluation to learn from")
    if objective not in OBJECTIVES:
        available = set(results[0].get("metrics", {}))
        if objective not in available:
            raise ConfigError(f"search.objective: {objective!r} is not a metric of the evaluations (they report "
                              f"{', '.join(sorted(available)) or 'no metric'}); use macro_rank or one of those")
        return [objective]
    return list(results[0]["domains"])


def target_values(result: dict, targets: list[str], objective: str, lower_is_better=()) -> list[float]:
    if objective in OBJECTIVES:
        return [float(result["domains"][t]) for t in targets]
    value = float(result["metrics"][objective])
    return [-value if objective in lower_is_better else value]


def target_stderrs(result: dict, targets: list[str], objective: str) -> list[float] | None:
    """The standard errors of `target_values` (lm-eval's, per domain or metric), or None where the
    evaluation gave none (a user's `eval.command`, a task without standard errors)."""
    found = result.get("domain_stderrs" if objective in OBJECTIVES else "stderrs") or {}
    if not all(t in found for t in targets):
        return None
    return [float(found[t]) for t in targets]


def percentile_ranks(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per column, the share of `reference` at or below each value (0..1; ties count as below)."""
    ranks = np.empty_like(values, dtype=np.float64)
    for t in range(values.shape[1]):
        column = np.sort(reference[:, t])
        ranks[:, t] = np.searchsorted(column, values[:, t], side="right") / len(column)
    return ranks


def weights_for(targets: list[str], domain_weights: dict[str, float]) -> np.ndarray:
    if not domain_weights:
        return np.full(len(targets), 1 / len(targets))
    unknown = sorted(set(domain_weights) - set(targets))
    if unknown:
        raise ConfigError(f"search.domain_weights: unknown domain(s) {', '.join(unknown)}; the domains are {', '.join(targets)}")
    w = np.array([domain_weights.get(t, 0.0) for t in targets])
    if not w.sum() > 0:
        raise ConfigError(f"search.domain_weights: {domain_weights} gives no weight to any of {', '.join(targets)}")
    return w / w.sum()


def spread(measured: np.ndarray, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) per column of the measured targets. The spread is their standard deviation, but never
    below the evaluation's own noise (`noise`, a typical standard error per column): a domain the mixtures
    move less than the noise would otherwise be blown up to full weight with noise; one that does not move
    at all gets spread 1 (a constant, no weight)."""
    scale = measured.std(axis=0)
    if noise is not None:
        scale = np.maximum(scale, np.nan_to_num(noise))
    return measured.mean(axis=0), np.where(scale > 0, scale, 1.0)


def typical_noise(stderr: np.ndarray | None) -> np.ndarray | None:
    """Per target, the median standard error the evaluations reported (None where none did)."""
    if stderr is None or not np.isfinite(stderr).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no noise known there
        return np.nanmedian(stderr, axis=0)


def linear_coefficients(targets: list[str], objective: str, domain_weights: dict[str, float],
                        measured: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray | None:
    """c with composite = values @ c + constant, for the objectives that are linear in the targets (their
    uncertainty follows from the targets'); None for `macro_rank`."""
    if objective == "macro_rank":
        return None
    if objective == "standardized":
        return weights_for(targets, domain_weights) / spread(measured, noise)[1]
    return np.ones(1)


def composite(values: np.ndarray, reference: np.ndarray, targets: list[str], objective: str,
              domain_weights: dict[str, float], measured: np.ndarray | None = None,
              noise: np.ndarray | None = None) -> np.ndarray:
    """One score per row of `values` [n, T], higher is better. `reference` [m, T] defines the ranks of
    `macro_rank`; `measured` [e, T] (the evaluated mixtures' targets) and `noise` [T] the spreads of `standardized`."""
    if objective == "macro_rank":
        return percentile_ranks(values, reference) @ weights_for(targets, domain_weights)
    if objective == "standardized":
        centre, scale = spread(reference if measured is None else measured, noise)
        return ((values - centre) / scale) @ weights_for(targets, domain_weights)
    return values[:, 0].astype(np.float64)


OBJECTIVES = ("macro_rank", "standardized")
"""Objectives over the domain scores; any other `search.objective` names one metric."""


def check_finite(metrics: dict, where: str) -> dict[str, float]:
    """A flat {metric: number} with every value finite; anything else is an error naming the key."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"{where}: expected a non-empty JSON object {{metric: number}}, got {str(metrics)[:200]}")
    clean = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {key!r} is {value!r}, not a finite number")
        clean[str(key)] = float(value)
    return clean
