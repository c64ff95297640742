"""What an evaluation says per domain, and the two nulls that train nothing beyond the components.

    rows = task_rows(record, plan)                              # every task's metric, stderr, domain, orientation
    accuracy_scores(record, plan)                               # {domain: mean of its accuracy-type tasks}
    interpolate(mixtures, {"code_high": {"code": 0.4, ...}})    # {mixture id: {domain: sum_i alpha_i score_i}}
    prior_distance(mixtures, prior, domains)                    # {mixture id: {domain: -L1(alpha, prior)}}

The nulls ask whether a method knows more than the simplest alternatives: **interpolation** mixes
the components' own scores by the mixture weights, so a merged proxy that ranks no better has
added nothing by merging weights; **prior distance** ranks a mixture by closeness to the token
prior (the same value for every domain), knowing nothing of any model.

Capability recovery (a ratio of sums) needs positive, higher-is-better scores: it is computed on
the accuracy-type tasks alone (`ACCURACY`: acc, acc_norm, exact_match, pass@k), each domain the mean
of its accuracy-type tasks; a domain without one has no recovery (bits per byte enter domain
scores negated and would make the ratio meaningless).
"""
from __future__ import annotations

import numpy as np

ACCURACY = ("acc", "acc_norm", "exact_match")
"""lm-eval metric names bounded in [0, 1], higher is better; `pass@k` counts too."""
LOWER_IS_BETTER = ("bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity")
"""lm-eval's metrics that enter a domain score negated even when eval.lower_is_better does not list them."""


def is_accuracy(metric_key: str) -> bool:
    name = metric_key.split(",")[0]
    return name in ACCURACY or name.startswith("pass@")


def task_rows(record: dict, plan) -> list[dict]:
    """One row per (domain, task) of an evaluation record (search/evaluate.py): metric (the record's own name,
    else the one eval.metrics or the built-in tasks set; empty: the task's first), value, stderr (None where
    lm-eval gave none), whether it enters its domain score negated, whether it is accuracy-type. The record
    keeps no orientation: the rows must reproduce its domain scores, or this fails naming the domain."""
    lower = set(plan.lower_is_better) | set(LOWER_IS_BETTER)
    rows = []
    for domain, tasks in plan.domains.items():
        for task in tasks:
            key = record.get("metric_names", {}).get(task) or plan.metric_names.get(task, "")
            rows.append({"domain": domain, "task": task, "metric": key, "value": float(record["metrics"][task]),
                         "stderr": record.get("stderrs", {}).get(task), "negated": task in lower or key.split(",")[0] in lower,
                         "accuracy": is_accuracy(key)})
        mine = [r for r in rows if r["domain"] == domain]
        score = float(np.mean([-r["value"] if r["negated"] else r["value"] for r in mine]))
        if not np.isclose(score, record["domains"][domain], rtol=1e-9, atol=1e-12):
            raise ValueError(f"evaluation {record['id']}: domain {domain} scored {record['domains'][domain]}, but its tasks"
                             f" {', '.join(tasks)} give {score} (a lower-is-better metric not in eval.lower_is_better?)")
    return rows


def accuracy_scores(record: dict, plan) -> dict[str, float]:
    """{domain: mean of its accuracy-type tasks' values}, for the domains that have one."""
    by_domain: dict[str, list[float]] = {}
    for row in task_rows(record, plan):
        if row["accuracy"]:
            by_domain.setdefault(row["domain"], []).append(float(row["value"]))
    return {d: float(np.mean(v)) for d, v in by_domain.items()}


def interpolate(mixtures: list[dict], components: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """sum_i alpha_i * score(component_i) per domain, for each mixture (`components`: {candidate: {domain: score}})."""
    domains = set.intersection(*(set(s) for s in components.values()))
    return {m["id"]: {d: float(sum(share * components[name][d] for name, share in m["mixture"].items()))
                      for d in sorted(domains)} for m in mixtures}


def prior_distance(mixtures: list[dict], prior: dict[str, float], domains: list[str]) -> dict[str, dict[str, float]]:
    """Minus the L1 distance of each mixture to the token prior, as every domain's score."""
    return {m["id"]: dict.fromkeys(domains, -float(sum(abs(m["mixture"][n] - prior.get(n, 0.0)) for n in m["mixture"])))
            for m in mixtures}
