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
    mixtures = reference_mixtures(experiment)
    runs = training_runs(experiment, mixtures)
    component_iters = experiment.training.train_iters  # 200 (set above)
    assert [(r.id, r.train_iters) for r in runs if r.id.endswith("v000")] == [
        ("reference-v000", component_iters), ("trained-0.125x-v000", 25), ("trained-0.5x-v000", 100)]
    assert len(runs) == 16 and all(r.save.endswith(f"validate/models/{r.id}") for r in runs)
    prior = runs[-1]  # Table 3: the token prior at the reference budget (the search has no final mixture here)
    assert (prior.id, prior.mixture, prior.train_iters) == ("quality-prior", {"code": 0.75, "math": 0.25}, component_iters)
    entries = evaluation_entries(experiment, mixtures)
    assert len(entries) == 21 and [e["id"] for e in entries[:5]] == [f"demix-v00{i}" for i in range(5)]
    assert all("checkpoint" not in e for e in entries[:5]) and all(e["checkpoint"].endswith(e["id"]) for e in entries[5:])
    tokens_per_iter = 16 * 128
    assert training_tokens(experiment, mixtures) == {
        "reference": 5 * component_iters * tokens_per_iter, "demix": 2 * component_iters * tokens_per_iter,
        "trained-0.125x": 5 * 25 * tokens_per_iter, "trained-0.5x": 5 * 100 * tokens_per_iter}


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
    assert paper.references == 96 and paper.reference_budget == pytest.approx(50 / 30, abs=1e-3)


def test_mixture_quality_ranks_among_the_references(tmp_path):
    from megatron_demix.validate.report import write_mixture_quality

    reference = {"v0": {"code": 0.30, "math": 0.50}, "v1": {"code": 0.40, "math": 0.45}, "v2": {"code": 0.35, "math": 0.60}}
    mixtures = [{"id": "prior", "mixture": {"code": 0.5, "math": 0.5}}, {"id": "search-final", "mixture": {"code": 0.8, "math": 0.2}}]
    scores = {"prior": {"code": 0.33, "math": 0.55}, "search-final": {"code": 0.45, "math": 0.40}}
    records = write_mixture_quality(tmp_path, mixtures, scores, reference)
    assert [r["ranks"] for r in records] == [{"code": 3, "math": 2}, {"code": 1, "math": 4}]
    assert [r["macro_rank"] for r in records] == [2.5, 2.5]
    assert "| prior | code 0.500, math 0.500 | 0.3300 (3) | 0.5500 (2) | 2.50 |" in (tmp_path / "mixture_quality.md").read_text()
