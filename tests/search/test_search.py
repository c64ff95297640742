"""The whole search on a synthetic objective (known optimum + noise) through the real executors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_demix.cluster.executor import LocalExecutor
from megatron_demix.experiment import load_experiment
from megatron_demix.search.driver import Search, run_search, search_status
from megatron_demix.search.objective import composite

sys.path.insert(0, str(Path(__file__).parent))
from conftest import OPTIMUM, evaluations, synthetic_experiment  # noqa: E402
from synthetic_eval import true_scores  # noqa: E402

SEEDS = (0, 1, 2)
NAMES = list(OPTIMUM)


def _distance(mixture: dict) -> float:
    return sum(abs(mixture[n] - OPTIMUM[n]) for n in NAMES)


def _random_search(experiment, budget: int, seed: int, noise: float) -> dict:
    """The baseline at equal budget: `budget` random pool mixtures, the best measured one (same noise model)."""
    import hashlib
    import random

    search = Search(experiment)
    pool = search.space.sample(experiment.search.pool_size, np.random.default_rng(seed + 1000))
    picks = pool[np.random.default_rng(seed + 2000).choice(len(pool), budget, replace=False)]
    measured = []
    for row in picks:
        mixture = dict(zip(NAMES, row.tolist()))
        rng = random.Random(hashlib.sha256(f"{seed} {json.dumps(mixture, sort_keys=True)}".encode()).digest())
        measured.append([v + rng.gauss(0, noise) for v in true_scores(mixture, OPTIMUM).values()])
    measured = np.array(measured)
    best = int(np.argmax(composite(measured, measured, ["general", "target"], "macro_rank", {})))
    return dict(zip(NAMES, picks[best].tolist()))


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """A 16+8+4 search per seed (plus the final mixture's own evaluation), through the local executor."""
    runs = []
    for seed in SEEDS:
        tmp = tmp_path_factory.mktemp(f"seed{seed}")
        experiment = load_experiment(synthetic_experiment(tmp, seed=seed, noise=0.01))
        answer = run_search(experiment, tmp / "experiment.yaml", LocalExecutor(experiment.cluster, tmp / "logs"))
        runs.append((seed, tmp, experiment, answer))
    return runs


def test_search_ends_near_the_optimum_and_beats_random_search(searches):
    search_distances, random_distances, search_quality, random_quality = [], [], [], []
    for seed, tmp, experiment, answer in searches:
        mixture = answer["mixture"]
        assert abs(sum(mixture.values()) - 1) < 1e-9
        assert len(evaluations(tmp)) == 16 + 8 + 4 + 1  # every mixture evaluated once, the final one too
        baseline = _random_search(experiment, 28, seed, noise=0.01)
        search_distances.append(_distance(mixture))
        random_distances.append(_distance(baseline))
        search_quality.append(true_scores(mixture, OPTIMUM)["quality"])
        random_quality.append(true_scores(baseline, OPTIMUM)["quality"])
    # Stated distance: L1 to the optimum below 0.2 for every seed (the prior sits 0.6 away; measured 0.03-0.12).
    assert max(search_distances) < 0.2, search_distances
    assert np.mean(search_distances) < np.mean(random_distances), (search_distances, random_distances)
    assert np.mean(search_quality) > np.mean(random_quality), (search_quality, random_quality)


def test_final_mixture_file_report_and_status(searches):
    _, tmp, experiment, answer = searches[0]
    root = Path(experiment.work_dir) / "search"
    written = json.loads((root / "final_mixture.json").read_text())
    assert written == json.loads((root / "report" / "final_mixture.json").read_text())
    assert written["effective_shares"]["general"] == pytest.approx(0.5)
    assert sum(written["effective_shares"].values()) == pytest.approx(1.0)
    assert written["predicted"]["uncertainty"] is not None and written["measured"]["of"] == 29
    assert 1 <= written["measured"]["rank"] <= 5  # the answer measures among the best evaluated
    for name in ("summary.md", "predicted_vs_measured.png", "final_vs_prior.png", "scores_by_round.png"):
        assert (root / "report" / name).stat().st_size > 0
    summary = (root / "report" / "summary.md").read_text()
    assert "rank" in summary and "law" in summary and "## The answer, checked" in summary and "## Next stage" in summary
    assert written["rule"] in ("argmax", "best_evaluated") and written["check"]["noise"] > 0
    # The answer as the next stage takes it: Megatron-LM's weighted prefixes, and this trainer's run file.
    pairs = (root / "data_args.txt").read_text().split()
    weights, prefixes = [float(w) for w in pairs[0::2]], pairs[1::2]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and prefixes[0].endswith("/data/general/general")
    assert (root / "data_path.txt").read_text().split() == pairs
    run = json.loads((root / "final_run.jsonl").read_text())
    assert run["mixture"] == written["mixture"] and "--mixture-runs" in written["next_stage"]["train_command"]
    for r in (1, 2):  # per round: the model that proposed it, its cross-validation and predictions
        assert (root / f"round-{r}" / "model.pkl").exists() and (root / f"round-{r}" / "scores.npy").exists()
    status = search_status(experiment)
    assert [r["done"] for r in status["rounds"]] == [16, 8, 4]
    assert status["final"]["mixture"] == written["mixture"] and status["best_predicted_mixture"]


def test_a_finished_search_is_not_redone(searches, run_tool):
    _, tmp, experiment, answer = searches[1]
    refused = run_tool(tmp / "experiment.yaml")
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = run_tool(tmp / "experiment.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(evaluations(tmp)) == 29
    assert json.loads((Path(experiment.work_dir) / "search/final_mixture.json").read_text())["mixture"] == answer["mixture"]
