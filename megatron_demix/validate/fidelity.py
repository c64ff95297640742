"""Every fidelity number of `demix validate`, from the evaluation records: methods, nulls, ceiling, Table 3.

    evaluations = Evaluations.build(records, mixtures, quality, methods=[...], candidates=[...], prior={...}, plan=plan)
    result = measure(evaluations, settings, tokens)     # {"records", "differences", "ceiling", "quality", ...}

- Methods against the references, per domain and macro (mean over domains): every metric of
  metrics.py as its point value (scipy), with a 95% interval from one paired bootstrap
  (bootstrap.py) shared by all methods and domains; capability recovery on the accuracy-type tasks
  (nulls.py), the others on the domain scores.
- Differences demix - each other method, per domain and macro, from the same resamples.
- The noise ceiling: per domain, the replicates' noise sd = sd(replicate - reference) / sqrt(2), the gaps
  centred on their mean (ddof 1): another seed can shift every mixture alike (the same general documents
  reach every blend in the same order), which changes no rank and is reported apart as the mean gap;
  the ceiling is the rho (top-25% rho, Kendall tau) two independent trainings of every reference
  would reach: references shrunk to their noise-free spread, t = mean + (r - mean) sqrt(1 - sd^2 / var),
  plus independent N(0, sd^2) noise on each side (mean of 2,000 noise draws; its interval resamples the
  references and the replicate pairs, one noise draw per resample).
- Table 3: each quality model's rank among the references per domain (1 + how many score higher),
  with a band: the ranks of its score +- 1.96 sqrt(2) sd (a 95% band for the difference of two
  trainings of the same mixture).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_demix.validate.bootstrap import ROWS, PairedBootstrap
from megatron_demix.validate.metrics import METRICS, MetricUndefined, PairedScores, paired_scores
from megatron_demix.validate.nulls import accuracy_scores, interpolate, prior_distance
from megatron_demix.validate.run import COMPONENT, DEMIX, INTERPOLATION, PRIOR_DISTANCE, QUALITY, REFERENCE, REPLICATE

CEILING_METRICS = ("rho", "top25_rho", "kendall_tau")
NOISE_DRAWS = 2000


@dataclass
class Evaluations:
    """The scores of every method on the reference mixtures ({method: {mixture id: {domain: score}}}), the
    accuracy-type scores recovery uses, the replicates and the quality models, all from the evaluation records."""

    mixtures: list[dict]
    quality: list[dict]
    records: dict[str, dict]
    scores: dict[str, dict[str, dict[str, float]]]
    accuracy: dict[str, dict[str, dict[str, float]]]
    replicates: dict[str, dict[str, float]]
    quality_scores: dict[str, dict[str, float]]
    plan: object
    """The evaluations' TaskPlan (eval/proxies.py): domains and their tasks."""
    candidates: list[str]

    @classmethod
    def build(cls, records: dict[str, dict], mixtures: list[dict], quality: list[dict], *, methods: list[str],
              candidates: list[str], prior: dict[str, float], plan) -> "Evaluations":
        scores = {m: {x["id"]: records[f"{m}-{x['id']}"]["domains"] for x in mixtures} for m in methods}
        accuracy = {m: {x["id"]: accuracy_scores(records[f"{m}-{x['id']}"], plan) for x in mixtures} for m in methods}
        component = {c: records[f"{COMPONENT}-{c}"] for c in candidates}
        scores[INTERPOLATION] = interpolate(mixtures, {c: r["domains"] for c, r in component.items()})
        accuracy[INTERPOLATION] = interpolate(mixtures, {c: accuracy_scores(r, plan) for c, r in component.items()})
        scores[PRIOR_DISTANCE] = prior_distance(mixtures, prior, sorted(scores[REFERENCE][mixtures[0]["id"]]))
        replicates = {x["id"]: records[f"{REPLICATE}-{x['id']}"]["domains"] for x in mixtures
                      if f"{REPLICATE}-{x['id']}" in records}
        quality_scores = {q["id"]: records[f"{QUALITY}-{q['id']}"]["domains"] for q in quality}
        return cls(mixtures, quality, records, scores, accuracy, replicates, quality_scores, plan, candidates)

    @property
    def ids(self) -> list[str]:
        """The references' ids in sorted order: the order of paired_scores and of the bootstrap's indices."""
        return sorted(m["id"] for m in self.mixtures)

    @property
    def domains(self) -> list[str]:
        return sorted(self.scores[REFERENCE][self.ids[0]])

    def models(self) -> list[tuple[str, str, str]]:
        """(model id, method, mixture id or candidate) of every evaluation record."""
        methods = [m for m in self.scores if m not in (INTERPOLATION, PRIOR_DISTANCE)]
        return ([(f"{m}-{i}", m, i) for m in methods for i in self.ids]
                + [(f"{REPLICATE}-{i}", REPLICATE, i) for i in sorted(self.replicates)]
                + [(f"{COMPONENT}-{c}", COMPONENT, c) for c in self.candidates]
                + [(f"{QUALITY}-{q['id']}", QUALITY, q["id"]) for q in self.quality])

    def column(self, method: str, domain: str) -> np.ndarray:
        """One method's scores of `domain` over the references, in `ids` order."""
        return np.array([self.scores[method][i][domain] for i in self.ids], dtype=np.float64)


def _pairs(ev: Evaluations, method: str, domain: str, name: str) -> PairedScores | str:
    """The scores metric `name` compares (accuracy-type ones for recovery), or why there are none."""
    where = f"method {method}, domain {domain}"
    if name != "recovery":
        return paired_scores(ev.scores[method], ev.scores[REFERENCE], domain, method)
    if method not in ev.accuracy:
        return f"{where}: a distance is no accuracy: capability recovery is undefined"
    if domain not in ev.accuracy[REFERENCE][ev.ids[0]]:
        return f"{where}: no accuracy-type task in this domain (eval.tasks): capability recovery is undefined"
    return paired_scores(ev.accuracy[method], ev.accuracy[REFERENCE], domain, method)


def _row(method, domain, n, tokens, values, intervals, undefined=None) -> dict:
    return {"method": method, "domain": domain, "mixtures": n, "train_tokens": tokens, **values,
            **{f"{k}_ci": intervals[k] for k in METRICS}, "undefined": undefined or {}}


def measure(ev: Evaluations, settings, tokens: dict[str, int]) -> dict:
    """Every table of the report (see the module docstring)."""
    boot = PairedBootstrap(len(ev.ids), settings.bootstrap_samples, settings.seed)
    methods = [m for m in ev.scores if m != REFERENCE]
    points, samples, undefined = {}, {}, {}
    for method in methods:
        for domain in ev.domains:
            for name in METRICS:
                pairs, value = _pairs(ev, method, domain, name), None
                if isinstance(pairs, str):
                    undefined[method, domain, name] = pairs
                else:
                    try:
                        value = METRICS[name](pairs)
                    except MetricUndefined as error:
                        undefined[method, domain, name] = str(error)
                points[method, domain, name] = value
                samples[method, domain, name] = (np.full(boot.samples, np.nan) if value is None
                                                 else boot.metric(name, pairs.proxy, pairs.reference))
        for name in METRICS:
            domain_values = [points[method, d, name] for d in ev.domains]
            points[method, "macro", name] = None if None in domain_values else float(np.mean(domain_values))
            samples[method, "macro", name] = np.mean([samples[method, d, name] for d in ev.domains], axis=0)
    n = len(ev.ids)
    records = [_row(m, d, n, tokens[m], {k: points[m, d, k] for k in METRICS},
                    {k: boot.interval(samples[m, d, k]) for k in METRICS},
                    {k: why for (mm, dd, k), why in undefined.items() if (mm, dd) == (m, d)})
               for m in methods for d in [*ev.domains, "macro"]]
    differences = []
    for other in (m for m in methods if m != DEMIX):
        for d in [*ev.domains, "macro"]:
            values = {k: None if points[DEMIX, d, k] is None or points[other, d, k] is None
                      else points[DEMIX, d, k] - points[other, d, k] for k in METRICS}
            intervals = {k: None if values[k] is None else boot.interval(samples[DEMIX, d, k] - samples[other, d, k])
                         for k in METRICS}
            differences.append(_row(f"{DEMIX} - {other}", d, n, None, values, intervals))
    ceiling = noise_ceiling(ev, boot, settings.seed)
    return {"records": records, "differences": differences, "ceiling": ceiling, "train_tokens": tokens,
            "quality": mixture_quality(ev, ceiling)}


def replicate_gaps(ev: Evaluations, domain: str) -> np.ndarray:
    """replicate - reference per replicated mixture (sorted ids)."""
    return np.array([ev.replicates[i][domain] - ev.scores[REFERENCE][i][domain] for i in sorted(ev.replicates)])


def noise_sd(gaps: np.ndarray) -> float:
    """One training's noise sd from the gaps between two trainings of each mixture, their common shift removed
    (NaN when a resample holds one distinct gap: no spread to measure)."""
    return float(np.std(gaps, ddof=1) / math.sqrt(2)) if len(set(gaps.tolist())) > 1 else math.nan


def _ceiling_rows(reference: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """reference [B, n], sd [B]: one noise draw per row of the rank metrics between two noisy copies of the
    shrunk references."""
    mean, var = reference.mean(axis=-1, keepdims=True), reference.var(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = np.sqrt(np.clip(1 - sd[:, None] ** 2 / var, 0, 1))
    truth = mean + (reference - mean) * np.nan_to_num(shrink)
    first = truth + rng.normal(size=truth.shape) * sd[:, None]
    second = truth + rng.normal(size=truth.shape) * sd[:, None]
    return {k: ROWS[k](first, second) for k in CEILING_METRICS}


def noise_ceiling(ev: Evaluations, boot: PairedBootstrap, seed: int) -> dict | None:
    """Per domain and macro: noise sd, the replicate pairs, and the ceiling of the rank metrics with intervals."""
    if not ev.replicates:
        return None
    rng = np.random.default_rng([seed, 2])
    pair_picks = rng.integers(0, len(ev.replicates), size=(boot.samples, len(ev.replicates)))
    rows, per_sample = [], {}
    for domain in ev.domains:
        reference, gaps = ev.column(REFERENCE, domain), replicate_gaps(ev, domain)
        sd = noise_sd(gaps)
        point = _ceiling_rows(np.tile(reference, (NOISE_DRAWS, 1)), np.full(NOISE_DRAWS, sd), rng)
        sds = np.array([noise_sd(gaps[p]) for p in pair_picks])
        per_sample[domain] = _ceiling_rows(reference[boot.indices], sds, rng)
        rows.append({"domain": domain, "noise_sd": sd, "mean_gap": float(gaps.mean()), "reference_sd": float(reference.std()),
                     "pairs": {i: (ev.scores[REFERENCE][i][domain], ev.replicates[i][domain]) for i in sorted(ev.replicates)},
                     **{k: float(np.nanmean(point[k])) if np.isfinite(point[k]).any() else None for k in CEILING_METRICS},
                     **{f"{k}_ci": boot.interval(per_sample[domain][k]) for k in CEILING_METRICS}})
    macro = {k: None if any(r[k] is None for r in rows) else float(np.mean([r[k] for r in rows])) for k in CEILING_METRICS}
    macro.update({f"{k}_ci": boot.interval(np.mean([per_sample[d][k] for d in ev.domains], axis=0)) for k in CEILING_METRICS})
    return {"replicates": len(ev.replicates), "domains": rows, "macro": macro}


def rank_among(score: float, references) -> int:
    """1 + how many references score higher (1: better than every reference)."""
    return 1 + sum(1 for r in references if r > score)


def mixture_quality(ev: Evaluations, ceiling: dict | None) -> list[dict]:
    """Table 3: per quality model, score and rank per domain, macro rank, and the rank band from the noise."""
    sd = {r["domain"]: r["noise_sd"] for r in ceiling["domains"] if math.isfinite(r["noise_sd"])} if ceiling else {}
    out = []
    for q in ev.quality:
        scores = ev.quality_scores[q["id"]]
        ranks, bands = {}, {}
        for d in ev.domains:
            references = ev.column(REFERENCE, d)
            ranks[d] = rank_among(scores[d], references)
            if d in sd:
                half = 1.96 * math.sqrt(2) * sd[d]
                bands[d] = (rank_among(scores[d] + half, references), rank_among(scores[d] - half, references))
        band = ((float(np.mean([b[0] for b in bands.values()])), float(np.mean([b[1] for b in bands.values()])))
                if len(bands) == len(ev.domains) else None)
        out.append({"mixture": q["id"], "shares": q["mixture"], "scores": {d: scores[d] for d in ev.domains},
                    "ranks": ranks, "bands": bands, "macro_rank": float(np.mean(list(ranks.values()))), "macro_band": band})
    return out
