"""A finished search goes on (issue 29): `--rounds-more N` adds rounds on the same state, and a candidate added to
the experiment joins it on the enlarged simplex, every earlier evaluation kept as data at its share 0 (never
evaluated again); what would make earlier evaluations invalid is refused, naming it."""
from __future__ import annotations

import json

import numpy as np
import yaml

from tests.search.conftest import evaluations, synthetic_experiment

SMALL = {"round_sizes": [4, 2], "mixtures_per_task": 4, "top_k": 4, "pool_size": 500, "predictor": "quadratic",
         "climb_starts": 0, "ensemble_size": 2}
"""The machinery, not the predictor, is under test: the cheapest fits."""


def _results(work) -> dict:
    """{file: mtime} of the rounds' evaluations."""
    return {p: p.stat().st_mtime_ns for p in (work / "search").glob("round-*/results/*.json")}


def _finished(tmp_path, run_tool):
    config = synthetic_experiment(tmp_path, SMALL)
    out = run_tool(config, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert len(evaluations(tmp_path)) == 4 + 2 + 1
    return config, tmp_path / "work"


def _edit(config, change) -> None:
    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data))


def _add_extra(data) -> None:
    data["datasets"].append({"name": "extra", "builtin": "prose"})
    data["search"]["prior"]["extra"] = 0.25  # token counts or shares: those of the others are unchanged


def test_rounds_more_extends_a_finished_search_and_evaluates_its_new_answer(tmp_path, run_tool):
    config, work = _finished(tmp_path, run_tool)
    before, answered = _results(work), (work / "search" / "final" / "results" / "final.json").read_text()
    out = run_tool(config, "--rounds-more", "2", "--round-size", "3", timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert len(names) == 7 + 3 + 3 + 1 and names[-1] == "final", "2 rounds of 3, then the new answer's own proxy"
    assert all(_results(work)[p] == t for p, t in before.items()), "earlier evaluations are not redone"
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert answer["rounds"] == [4, 2, 3, 3] and answer["measured"] is not None
    assert answer["evaluations"] == 4 + 2 + 1 + 3 + 3, "the earlier answer's evaluation is data (answer-0)"
    assert (work / "search" / "answer-0" / "results" / "final.json").read_text() == answered
    summary = (work / "search" / "report" / "summary.md").read_text()
    assert "| round-3 | 3 | 3 |" in summary and "| answer-0 | - | 1 |" in summary


def test_an_added_candidate_joins_a_finished_search_with_every_earlier_evaluation(tmp_path, run_tool):
    config, work = _finished(tmp_path, run_tool)
    before = _results(work)
    _edit(config, _add_extra)
    out = run_tool(config, "--resume", timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert len(names) == 7 + 2 + 1 and len(set(names[7:])) == 3, "only the new round (2, at random) and the answer"
    assert all(_results(work)[p] == t for p, t in before.items())
    search = work / "search"
    plan = json.loads((search / "plan.json").read_text())
    assert plan["rounds"] == [4, 2, 2] and [p["added"] for p in plan["phases"]] == [[], ["extra"]]
    assert np.load(search / "pool.npy").shape[1] == 3 and np.load(search / "pool-1.npy").shape[1] == 4
    drawn = json.loads((search / "round-2" / "proposals.json").read_text())
    assert all(p["mixture"]["extra"] > 0 for p in drawn), "the enlarged simplex is sampled"
    answer = json.loads((search / "final_mixture.json").read_text())
    assert set(answer["mixture"]) == {"web", "math", "code", "extra"} and answer["measured"] is not None
    assert answer["evaluations"] == 4 + 2 + 1 + 2 and abs(sum(answer["prior"].values()) - 1) < 1e-9
    summary = (search / "report" / "summary.md").read_text()
    assert "extra added before round 2: the 6 evaluations made before" in summary
    assert "| round-0 | 3 (before extra was added) | 4 |" in summary and "| round-2 | 4 | 2 |" in summary


def test_what_would_invalidate_earlier_evaluations_is_refused(tmp_path, run_tool):
    config, work = _finished(tmp_path, run_tool)
    answer = (work / "search" / "final_mixture.json").read_text()
    original = config.read_text()
    refusals = {
        "eval.tasks": lambda d: (_add_extra(d), d["eval"]["tasks"].update(general=["quality", "closeness"])),
        "datasets.web.builtin": lambda d: (_add_extra(d), d["datasets"][1].update(builtin="code")),
        "no longer in the experiment's datasets": lambda d: (d["datasets"].pop(), d["search"]["prior"].pop("code")),
    }
    for named, change in refusals.items():
        config.write_text(original)
        _edit(config, change)
        out = run_tool(config, "--resume")
        assert out.returncode == 2, (named, out.stderr[-2000:])
        assert named in out.stderr, out.stderr[-2000:]
    assert (work / "search" / "final_mixture.json").read_text() == answer
    assert len(evaluations(tmp_path)) == 7 and not (work / "search" / "plan.json").read_text().count("extra")
