"""What the search maximises: targets read from each evaluation, and one composite score per mixture.

`search.objective`:
- `macro_rank` (the paper's): the targets are the domain scores (`eval.tasks` groups metrics into
  domains, higher is better); each becomes a percentile rank within a reference set (the pool's
  predictions, or the measured mixtures), and the composite is their mean with `search.domain_weights`.
- any other value names one metric of the evaluations' output: the target and the composite are
  that metric, negated when `eval.lower_is_better` lists it.
"""
from __future__ import annotations

import math

import numpy as np

from megatron_demix.config.base import ConfigError


def targets_of(results: list[dict], objective: str) -> list[str]:
    """Target names: the domains every result reports (macro_rank), or the objective's metric."""
    if not results:
        raise ValueError("no successful evaluation to learn from")
    if objective != "macro_rank":
        available = set(results[0].get("metrics", {}))
        if objective not in available:
            raise ConfigError(f"search.objective: {objective!r} is not a metric of the evaluations (they report "
                              f"{', '.join(sorted(available)) or 'no metric'}); use macro_rank or one of those")
        return [objective]
    return list(results[0]["domains"])


def target_values(result: dict, targets: list[str], objective: str, lower_is_better=()) -> list[float]:
    if objective == "macro_rank":
        return [float(result["domains"][t]) for t in targets]
    value = float(result["metrics"][objective])
    return [-value if objective in lower_is_better else value]


def target_stderrs(result: dict, targets: list[str], objective: str) -> list[float] | None:
    """The standard errors of `target_values` (lm-eval's, per domain or metric), or None where the
    evaluation gave none (a user's `eval.command`, a task without standard errors)."""
    found = result.get("domain_stderrs" if objective == "macro_rank" else "stderrs") or {}
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


def composite(values: np.ndarray, reference: np.ndarray, targets: list[str], objective: str,
              domain_weights: dict[str, float]) -> np.ndarray:
    """One score per row of `values` [n, T], higher is better; `reference` [m, T] defines the ranks."""
    if objective != "macro_rank":
        return values[:, 0].astype(np.float64)
    return percentile_ranks(values, reference) @ weights_for(targets, domain_weights)


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
