"""`demix validate`'s plan, in-process: the reference mixtures, the models it trains, what it evaluates, the
compute it charges, the blends the trainer reads, and its bad-input errors. The run itself, through real jobs,
is tests/test_pipeline.py::test_validate_measures_fidelity_equal_to_scipy_from_the_raw_scores."""
from __future__ import annotations

import json

import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.data.datasets import blend_for
from megatron_demix.experiment import experiment_from_dict
from megatron_demix.training.mixture_runs import select_mixture_run, write_mixture_runs
from megatron_demix.validate.run import evaluation_entries, reference_mixtures, training_runs, training_tokens


@pytest.fixture
def experiment(tmp_path, demo_config_dict):
    datasets = [{"name": "general", "role": "general", "builtin": "prose"}, {"name": "code", "builtin": "code"},
                {"name": "math", "builtin": "math"}]  # two candidates, the plan's arithmetic by hand
    training = {**demo_config_dict["training"], "train_iters": 200}
    return experiment_from_dict({**demo_config_dict, "work_dir": str(tmp_path / "work"), "datasets": datasets, "training": training,
                                 "search": {"prior": {"code": 3, "math": 1}, "pool_size": 100},
                                 "validate": {"references": 5, "proxy_budgets": [0.125, 0.5]}})


def test_mixtures_are_drawn_once_and_a_changed_setting_fails(experiment):
    mixtures = reference_mixtures(experiment)
    assert [m["id"] for m in mixtures] == ["v000", "v001", "v002", "v003", "v004"]
    assert all(abs(sum(m["mixture"].values()) - 1) < 1e-9 and set(m["mixture"]) == {"code", "math"} for m in mixtures)
    assert len({tuple(m["mixture"].values()) for m in mixtures}) == 5
    assert reference_mixtures(experiment) == mixtures
    from dataclasses import replace

    more = replace(experiment, validate=replace(experiment.validate, references=6))
    with pytest.raises(ConfigError, match=r"mixtures.json: drawn with seed 7, 5 references.*remove"):
        reference_mixtures(more)


def test_models_to_train_evaluations_and_compute(experiment):
    from dataclasses import replace

    mixtures = reference_mixtures(experiment)
    runs = training_runs(experiment, mixtures)
    component_iters = experiment.training.train_iters  # 200 (set above)
    assert [(r.id, r.train_iters) for r in runs if r.id.endswith("v000")] == [
        ("reference-v000", component_iters), ("trained-0.125x-v000", 25), ("trained-0.5x-v000", 100)]
    assert len(runs) == 16 and all(r.save.endswith(f"validate/models/{r.id}") for r in runs)
    prior = runs[-1]  # Table 3: the token prior at the reference budget (the search has no final mixture here)
    assert (prior.id, prior.mixture, prior.train_iters) == ("quality-prior", {"code": 0.75, "math": 0.25}, component_iters)
    entries = evaluation_entries(experiment, mixtures)
    assert len(entries) == 23 and [e["id"] for e in entries[:5]] == [f"demix-v00{i}" for i in range(5)]
    assert all("checkpoint" not in e for e in entries[:5])
    assert [(e["id"], e["mixture"]) for e in entries[5:7]] == [("component-code", {"code": 1.0, "math": 0.0}),
                                                               ("component-math", {"code": 0.0, "math": 1.0})]
    assert entries[5]["checkpoint"] == str(experiment.paths.checkpoint("code"))
    assert all(e["checkpoint"].endswith(e["id"]) for e in entries[7:])
    tokens_per_iter = 16 * 128
    components = 2 * component_iters * tokens_per_iter
    assert training_tokens(experiment, mixtures) == {
        "reference": 5 * component_iters * tokens_per_iter, "demix": components,
        "trained-0.125x": 5 * 25 * tokens_per_iter, "trained-0.5x": 5 * 100 * tokens_per_iter,
        "interpolation": components, "prior-distance": 0}
    charged = replace(experiment, validate=replace(experiment.validate, merged_proxy_tokens=1000))
    spent = training_tokens(charged, mixtures)
    assert (spent["demix"], spent["interpolation"]) == (components + 5 * 1000, components + 2 * 1000)


def test_replicates_train_the_first_references_again_with_another_data_order_seed(experiment):
    from dataclasses import replace


    more = replace(experiment, validate=replace(experiment.validate, replicates=2, proxy_budgets=[]))
    mixtures = reference_mixtures(more)
    runs = {r.id: r for r in training_runs(more, mixtures)}
    assert [i for i in runs if i.startswith("replicate-")] == ["replicate-v000", "replicate-v001"]
    assert runs["replicate-v001"].mixture == runs["reference-v001"].mixture
    assert runs["replicate-v001"].train_iters == runs["reference-v001"].train_iters
    assert (runs["reference-v001"].seed, runs["replicate-v001"].seed) == (None, more.training.seed + 1)
    with pytest.raises(ConfigError, match="replicates: 6 is more than the 5 references"):
        replace(more, validate=replace(more.validate, replicates=6))


def test_simplex_references_are_drawn_over_the_whole_simplex(experiment):
    from dataclasses import replace


    flat = replace(experiment, validate=replace(experiment.validate, sampling="simplex", max_share=0.7, min_spacing=0.1))
    mixtures = reference_mixtures(flat)
    shares = [m["mixture"]["code"] for m in mixtures]
    assert all(0.3 <= s <= 0.7 for s in shares), "two candidates: no share above 0.7 keeps both in [0.3, 0.7]"
    assert min(abs(a - b) * 2 for a in shares for b in shares if a != b) >= 0.1


def test_a_mixture_blend_is_beta_general_plus_the_mixture(experiment, tmp_path):
    blend = blend_for(experiment, "reference-v000", {"code": 0.25, "math": 0.75})
    assert blend.domains == ("general", "code", "math") and blend.weights == pytest.approx((0.5, 0.125, 0.375))
    assert blend_for(experiment, "x", {"code": 0.0, "math": 1.0}).domains == ("general", "math"), "a zero share is dropped"
    assert blend_for(experiment, "code").weights == (0.5, 0.5), "a component's own blend is unchanged"
    with pytest.raises(ConfigError, match="summing to 1 .*not 0.9"):
        blend_for(experiment, "x", {"code": 0.2, "math": 0.7})
    runs = tmp_path / "runs.jsonl"
    write_mixture_runs(runs, training_runs(experiment, reference_mixtures(experiment))[:2])
    assert select_mixture_run(runs, "1").id == "reference-v001" and select_mixture_run(runs, "reference-v000").train_iters == 200
    with pytest.raises(ConfigError, match=r"--component '7': not an id or a line index 0..1"):
        select_mixture_run(runs, "7")
    runs.write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(ConfigError, match="each line must be"):
        select_mixture_run(runs, "0")


@pytest.mark.parametrize("section, message", [({"references": 1}, "validate.references: 1 must be >= 2"),
                                              ({"proxy_budgets": [0.5, 0.5]}, "each > 0 and distinct"),
                                              ({"reference_budget": 0}, "validate.reference_budget: 0.0 must be > 0")])
def test_bad_validate_settings_name_the_key(demo_config_dict, tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({**demo_config_dict, "work_dir": str(tmp_path), "validate": section})


def test_the_shipped_fidelity_settings_load():
    from megatron_demix.experiment import load_experiment
    from tests.conftest import REPO

    tiny = load_experiment(REPO / "configs" / "fidelity-tiny.yaml").validate
    paper = load_experiment(REPO / "configs" / "paper.yaml").validate
    assert tiny.references == 12 and tiny.proxy_budgets == [0.125, 0.5]
    tiered = load_experiment(REPO / "configs" / "fidelity-tiered.yaml")
    settings = tiered.validate
    assert len(tiered.candidates) == 6 and settings.references >= 24 and settings.replicates >= 3
    assert settings.sampling == "simplex" and settings.seed != tiered.search.seed and settings.bootstrap_samples >= 2000
    assert settings.proxy_budgets[0] * settings.references == len(tiered.candidates), "the compute-matched budget"
    ci = load_experiment(REPO / "configs" / "fidelity-tiered-ci.yaml")
    assert [d.name for d in ci.candidates] == [d.name for d in tiered.candidates] and ci.validate.replicates == 2
    assert paper.references == 96 and paper.reference_budget == pytest.approx(50 / 30, abs=1e-3)
