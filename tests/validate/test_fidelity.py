"""validate/fidelity.py, mixtures.py and nulls.py on hand-made evaluation records: the nulls, recovery on the
accuracy-type tasks only, paired differences, the noise ceiling, Table 3's bands, the simplex references."""
from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from megatron_demix.config.base import ConfigError
from megatron_demix.eval.proxies import TaskPlan
from megatron_demix.validate.fidelity import Evaluations, measure
from megatron_demix.validate.mixtures import simplex_mixtures
from megatron_demix.validate.nulls import task_rows

PLAN = TaskPlan({"code": ["code_choice", "code_bpb"], "math": ["math_choice", "math_bpb"]},
                {"code_choice": "acc,none", "code_bpb": "bits_per_byte,none", "math_choice": "acc,none",
                 "math_bpb": "bits_per_byte,none"}, (), ())
CANDIDATES = ["a", "b", "c"]
MIXTURES = [{"id": f"v{i:03d}", "mixture": dict(zip(CANDIDATES, row))} for i, row in
            enumerate([(0.2, 0.3, 0.5), (0.5, 0.3, 0.2), (0.1, 0.6, 0.3), (0.4, 0.1, 0.5), (0.3, 0.4, 0.3), (0.6, 0.2, 0.2)])]
PRIOR = {"a": 0.5, "b": 0.25, "c": 0.25}


def record(ident: str, code_acc: float, code_bpb: float, math_acc: float, math_bpb: float) -> dict:
    metrics = {"code_choice": code_acc, "code_bpb": code_bpb, "math_choice": math_acc, "math_bpb": math_bpb}
    return {"id": ident, "metrics": metrics, "metric_names": PLAN.metric_names,
            "stderrs": {k: 0.01 for k in metrics}, "domain_stderrs": {"code": 0.007, "math": 0.007},
            "domains": {"code": (code_acc - code_bpb) / 2, "math": (math_acc - math_bpb) / 2}}


def evaluations(replicate_noise: float = 0.0) -> Evaluations:
    """References score a fixed function of the mixture; demix a noisy copy; trained proxies a worse one."""
    rng = np.random.default_rng(0)
    records = {}
    for m in MIXTURES:
        a, b, c = (m["mixture"][n] for n in CANDIDATES)
        truth = (0.3 + 0.4 * a + 0.1 * b, 2.0 - a, 0.2 + 0.5 * c, 1.8 - c + 0.3 * b)
        records[f"reference-{m['id']}"] = record(f"reference-{m['id']}", *truth)
        records[f"demix-{m['id']}"] = record(f"demix-{m['id']}", *(t + rng.normal(0, 0.02) for t in truth))
        records[f"trained-0.5x-{m['id']}"] = record(f"trained-0.5x-{m['id']}", *(0.9 * t + rng.normal(0, 0.1) for t in truth))
    for m in MIXTURES[:3]:
        values = [v + rng.normal(0, replicate_noise) for v in records[f"reference-{m['id']}"]["metrics"].values()]
        records[f"replicate-{m['id']}"] = record(f"replicate-{m['id']}", *values)
    for i, name in enumerate(CANDIDATES):
        records[f"component-{name}"] = record(f"component-{name}", 0.3 + 0.1 * i, 1.9 - 0.1 * i, 0.25 + 0.05 * i, 1.7)
    quality = [{"id": "prior", "mixture": PRIOR}]
    records["quality-prior"] = record("quality-prior", 0.55, 1.5, 0.3, 1.6)
    return Evaluations.build(records, MIXTURES, quality, methods=["reference", "demix", "trained-0.5x"],
                             candidates=CANDIDATES, prior=PRIOR, plan=PLAN)


SETTINGS = SimpleNamespace(bootstrap_samples=500, seed=3)
TOKENS = {"reference": 100, "demix": 30, "trained-0.5x": 50, "interpolation": 33, "prior-distance": 0}


def test_nulls_recovery_on_accuracy_and_paired_differences():
    ev = evaluations()
    result = measure(ev, SETTINGS, TOKENS)
    rows = {(r["method"], r["domain"]): r for r in result["records"]}
    assert {m for m, _ in rows} == {"demix", "trained-0.5x", "interpolation", "prior-distance"}
    # interpolation: sum_i alpha_i score(component_i), per domain; prior distance: -L1 to the prior
    components = {n: ev.records[f"component-{n}"]["domains"] for n in CANDIDATES}
    for m in MIXTURES:
        want = sum(m["mixture"][n] * components[n]["code"] for n in CANDIDATES)
        assert ev.scores["interpolation"][m["id"]]["code"] == pytest.approx(want)
        assert ev.scores["prior-distance"][m["id"]]["math"] == pytest.approx(-sum(abs(m["mixture"][n] - PRIOR[n]) for n in CANDIDATES))
    ids = ev.ids
    column = lambda method, d: [ev.scores[method][i][d] for i in ids]  # noqa: E731
    assert rows["interpolation", "code"]["rho"] == pytest.approx(stats.spearmanr(column("interpolation", "code"), column("reference", "code"))[0])
    # recovery: the accuracy tasks alone (the bits per byte would make the sums negative)
    acc = lambda prefix, task: sum(ev.records[f"{prefix}-{i}"]["metrics"][task] for i in ids)  # noqa: E731
    assert rows["demix", "math"]["recovery"] == pytest.approx(acc("demix", "math_choice") / acc("reference", "math_choice"))
    assert rows["prior-distance", "code"]["recovery"] is None
    assert "a distance is no accuracy" in rows["prior-distance", "code"]["undefined"]["recovery"]
    # macro = the mean over domains; differences = the difference of the points, intervals from shared resamples
    assert rows["demix", "macro"]["rho"] == pytest.approx((rows["demix", "code"]["rho"] + rows["demix", "math"]["rho"]) / 2)
    differences = {(r["method"], r["domain"]): r for r in result["differences"]}
    assert set(differences) == {(f"demix - {m}", d) for m in ("trained-0.5x", "interpolation", "prior-distance")
                                for d in ("code", "math", "macro")}
    diff = differences["demix - trained-0.5x", "macro"]
    assert diff["rho"] == pytest.approx(rows["demix", "macro"]["rho"] - rows["trained-0.5x", "macro"]["rho"])
    low, high = diff["rho_ci"]
    assert low <= diff["rho"] <= high


def test_identical_replicates_put_the_ceiling_at_one_and_noise_lowers_it():
    shifted = evaluations(replicate_noise=0.0)
    for scores in shifted.replicates.values():  # another seed moving every mixture alike changes no rank
        scores.update({d: v + 0.05 for d, v in scores.items()})
    exact = measure(shifted, SETTINGS, TOKENS)["ceiling"]
    assert exact["replicates"] == 3 and all(r["noise_sd"] == pytest.approx(0, abs=1e-12) for r in exact["domains"])
    assert all(r["mean_gap"] == pytest.approx(0.05) for r in exact["domains"])
    assert exact["macro"]["rho"] == pytest.approx(1.0) and exact["macro"]["kendall_tau"] == pytest.approx(1.0)
    noisy = measure(evaluations(replicate_noise=0.2), SETTINGS, TOKENS)["ceiling"]
    code = next(r for r in noisy["domains"] if r["domain"] == "code")
    gaps = [b - a for a, b in code["pairs"].values()]
    assert code["noise_sd"] == pytest.approx(statistics.stdev(gaps) / math.sqrt(2)) and code["mean_gap"] == pytest.approx(np.mean(gaps))
    assert noisy["macro"]["rho"] < 0.99 and noisy["macro"]["rho_ci"][0] < noisy["macro"]["rho_ci"][1]


def test_table3_ranks_and_the_band_from_the_noise():
    ev = evaluations(replicate_noise=0.2)
    result = measure(ev, SETTINGS, TOKENS)
    (prior,) = result["quality"]
    for d in ev.domains:
        references = [ev.scores["reference"][i][d] for i in ev.ids]
        score = ev.quality_scores["prior"][d]
        assert prior["ranks"][d] == 1 + sum(r > score for r in references)
        half = 1.96 * math.sqrt(2) * next(r["noise_sd"] for r in result["ceiling"]["domains"] if r["domain"] == d)
        assert prior["bands"][d] == (1 + sum(r > score + half for r in references), 1 + sum(r > score - half for r in references))
        assert prior["bands"][d][0] <= prior["ranks"][d] <= prior["bands"][d][1]
    assert prior["macro_rank"] == pytest.approx(np.mean(list(prior["ranks"].values())))


def test_a_record_whose_domain_score_its_tasks_do_not_give_is_refused():
    bad = record("x", 0.5, 1.0, 0.5, 1.0)
    bad["domains"]["code"] = 0.9
    with pytest.raises(ValueError, match=r"evaluation x: domain code scored 0.9, but its tasks code_choice, code_bpb give -0.25"):
        task_rows(bad, PLAN)


def test_simplex_references_keep_off_the_vertices_and_apart():
    drawn = simplex_mixtures(6, 24, max_share=0.6, min_spacing=0.4, rng=np.random.default_rng(11))
    assert drawn.shape == (24, 6) and np.allclose(drawn.sum(axis=1), 1) and drawn.max() <= 0.6
    distances = np.abs(drawn[:, None] - drawn[None]).sum(-1)
    assert distances[~np.eye(24, dtype=bool)].min() >= 0.4
    assert np.array_equal(drawn, simplex_mixtures(6, 24, max_share=0.6, min_spacing=0.4, rng=np.random.default_rng(11)))
    with pytest.raises(ConfigError, match=r"validate.references: only \d+ of 40 mixtures .* lower validate.min_spacing"):
        simplex_mixtures(3, 40, max_share=0.5, min_spacing=0.5, rng=np.random.default_rng(0), max_draws=20_000)
