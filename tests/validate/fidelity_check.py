"""The check of a `demix validate` run of configs/fidelity-tiered-ci.yaml (tests/test_pipeline.py runs it on the
pipeline's trained models): every number of its report recomputed here with scipy from the raw files it writes
(evaluations.csv, mixtures.json, the shares): the methods and both nulls, the paired bootstrap intervals, the
differences, the replicates' noise and Table 3's ranks."""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats


def _rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _scores_from_raw(root) -> tuple[dict, dict]:
    """({model: {domain: score}}, {model: {domain: accuracy}}) from evaluations.csv: a domain score is the mean of
    its tasks' values, negated ones negated; accuracy the mean of its accuracy-type tasks."""
    values, accuracy = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    for r in _rows(root / "evaluations.csv"):
        value = float(r["value"])
        values[r["model"]][r["domain"]].append(-value if r["negated"] == "1" else value)
        if r["accuracy"] == "1":
            accuracy[r["model"]][r["domain"]].append(value)
        if r["accuracy"] == "1":
            assert float(r["stderr"]) > 0, f"{r['model']} {r['task']}: its standard error is kept"
    mean = lambda table: {m: {d: float(np.mean(v)) for d, v in per.items()} for m, per in table.items()}  # noqa: E731
    return mean(values), mean(accuracy)


def _top(proxy, reference):
    k = min(max(2, len(reference) // 4), len(reference))
    keep = np.argsort(reference, kind="stable")[-k:]
    return stats.spearmanr(np.asarray(proxy)[keep], np.asarray(reference)[keep])[0]


SCIPY = {"rho": lambda p, r: stats.spearmanr(p, r)[0], "kendall_tau": lambda p, r: stats.kendalltau(p, r)[0],
         "top25_rho": _top, "regret": lambda p, r: max(r) - r[int(np.argmax(p))],
         "recovery": lambda p, r: sum(p) / sum(r)}


def _resampled(metric, proxy, reference, picks) -> np.ndarray:
    out = []
    for pick in picks:
        p, r = np.asarray(proxy)[pick], np.asarray(reference)[pick]
        ranked = metric in ("rho", "kendall_tau", "top25_rho")
        out.append(math.nan if ranked and (len(set(p)) < 2 or len(set(r)) < 2) else SCIPY[metric](p, r))
    return np.array(out)


def check_report(work) -> dict:
    """Every number of <work>/validate/ against scipy on its raw files; returns the scores recomputed from them,
    {method: {mixture id: {domain: score}}}."""
    from megatron_demix.experiment import load_experiment
    from megatron_demix.search.sampler import resolve_prior

    root = work / "validate"
    experiment = load_experiment(work / "experiment.yaml")
    settings, candidates = experiment.validate, [d.name for d in experiment.candidates]
    mixtures = json.loads((root / "mixtures.json").read_text())["mixtures"]
    ids = sorted(m["id"] for m in mixtures)
    shares = {m["id"]: m["mixture"] for m in mixtures}
    assert len(ids) == 4 and all(max(s.values()) <= 0.6 for s in shares.values())
    assert min(sum(abs(shares[a][n] - shares[b][n]) for n in candidates) for a in ids for b in ids if a < b) >= 0.4

    scores, accuracy = _scores_from_raw(root)
    domains = sorted(scores[f"reference-{ids[0]}"])
    assert domains == ["code", "general", "math"]
    prior = resolve_prior(experiment)
    methods = {m: {i: scores[f"{m}-{i}"] for i in ids} for m in ("reference", "demix", "trained-0.25x", "trained-0.5x")}
    acc = {m: {i: accuracy[f"{m}-{i}"] for i in ids} for m in methods}
    methods["interpolation"] = {i: {d: sum(shares[i][n] * scores[f"component-{n}"][d] for n in candidates) for d in domains}
                                for i in ids}
    acc["interpolation"] = {i: {d: sum(shares[i][n] * accuracy[f"component-{n}"][d] for n in candidates) for d in domains}
                            for i in ids}
    distance = {i: -sum(abs(shares[i][n] - prior[n]) for n in candidates) for i in ids}
    methods["prior-distance"] = {i: dict.fromkeys(domains, distance[i]) for i in ids}
    assert methods["demix"] != methods["reference"] and methods["interpolation"] != methods["demix"]

    table = {(r["method"], r["domain"]): r for r in _rows(root / "fidelity.csv")}
    picks = np.random.default_rng(settings.seed).integers(0, len(ids), size=(settings.bootstrap_samples, len(ids)))
    resampled = {}
    for method in ("demix", "trained-0.25x", "trained-0.5x", "interpolation", "prior-distance"):
        for metric in SCIPY:
            per_domain = []
            for d in domains:
                source = acc if metric == "recovery" else methods
                row = table[method, d]
                if metric == "recovery" and method == "prior-distance":
                    assert row["recovery"] == "", "a distance has no capability recovery"
                    continue
                proxy = [source[method][i][d] for i in ids]
                reference = [(acc if metric == "recovery" else methods)["reference"][i][d] for i in ids]
                if len(set(proxy)) < 2 and metric not in ("recovery", "regret"):
                    assert row[metric] == "", f"{method} {d} {metric}: constant scores have no rank correlation"
                    continue
                want = SCIPY[metric](proxy, reference)
                assert float(row[metric]) == pytest.approx(want, abs=1e-9), (method, d, metric)
                per_domain.append(want)
                resampled[method, d, metric] = _resampled(metric, proxy, reference, picks)
            if len(per_domain) == len(domains):
                assert float(table[method, "macro"][metric]) == pytest.approx(np.mean(per_domain), abs=1e-9)
    # the intervals: the same resamples for every method and domain, percentiles of the defined ones
    for method, d, metric in [("demix", "code", "rho"), ("demix", "math", "regret"), ("interpolation", "general", "rho")]:
        values = resampled[method, d, metric]
        row = table[method, d]
        if np.isfinite(values).sum() >= len(values) / 2:
            low, high = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
            assert (float(row[f"{metric}_low"]), float(row[f"{metric}_high"])) == pytest.approx((low, high), abs=1e-9)
        else:
            assert row[f"{metric}_low"] == "", "an interval over mostly undefined resamples is not reported"
    macro_diff = np.mean([resampled["demix", d, "regret"] - resampled["trained-0.5x", d, "regret"] for d in domains], axis=0)
    row = table["demix - trained-0.5x", "macro"]
    assert (float(row["regret_low"]), float(row["regret_high"])) == pytest.approx(tuple(np.percentile(macro_diff, [2.5, 97.5])), abs=1e-9)

    # the noise ceiling's input: the replicates' noise sd per domain
    replicated = [i for i in ids if f"replicate-{i}" in scores]
    assert len(replicated) == settings.replicates == 2
    for d in domains:
        gaps = [scores[f"replicate-{i}"][d] - scores[f"reference-{i}"][d] for i in replicated]
        assert all(g != 0 for g in gaps), "another data-order seed trains another model"
        sd = np.std(gaps, ddof=1) / math.sqrt(2)
        assert float(json.loads((root / "fidelity.json").read_text())["ceiling"]["domains"][domains.index(d)]["noise_sd"]) == pytest.approx(sd)
    assert {r["domain"] for r in _rows(root / "fidelity.csv") if r["method"] == "noise-ceiling"} == {*domains, "macro"}

    # Table 3: the prior and random search's best, trained like references, ranked among them
    quality = {r["mixture"]: r for r in _rows(root / "mixture_quality.csv")}
    assert set(quality) == {"prior", "random-best"}
    for name, r in quality.items():
        for d in domains:
            assert int(r[f"rank_{d}"]) == 1 + sum(methods["reference"][i][d] > scores[f"quality-{name}"][d] for i in ids)
    best = json.loads((root / "random-best.json").read_text())
    assert best["of"] == settings.random_search and best["id"].startswith("random-r")

    # token accounting: components once plus the stated charge per merged proxy
    per_iteration = experiment.training.global_batch_size * experiment.model.seq_length
    components = len(candidates) * experiment.training.train_iters * per_iteration
    assert int(table["demix", "macro"]["train_tokens"]) == components + len(ids) * settings.merged_proxy_tokens
    assert int(table["trained-0.25x", "macro"]["train_tokens"]) == len(ids) * 2 * per_iteration
    report = (root / "fidelity.md").read_text()
    for line in ("noise-ceiling (2 replicates)", "## Differences", f"{settings.merged_proxy_tokens:,} tokens per proxy",
                 "code: demix_code_choice", "## Mixture quality (Table 3)"):
        assert line in report, line
    for plot in ("proxy_vs_reference.png", "rho_vs_compute.png", "replicates.png"):
        assert (root / plot).read_bytes()[:4] == b"\x89PNG"
    return methods
